from __future__ import annotations

import warnings
import weakref

import numpy as np
import pytest
import torch
import transformers

from bench.decode import SIDAfterMarker, SIDTrie, constrained_beam_search, prefix_allowed_tokens_fn
from bench.errors import GRBenchError

VOCAB = 300
SID_LEVELS = [(100, 140), (140, 180), (180, 220), (220, 260)]  # token-id range of each SID position
PROMPT_TOKENS = (2, 100)  # prompts use ordinary tokens only


def tiny_causal_lm(seed: int = 0) -> transformers.PreTrainedModel:
    # initializer_range 0.2 (not 0.02) spreads the logits, so that beams are not separated by float noise
    torch.manual_seed(seed)
    config = transformers.Qwen3Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                      initializer_range=0.2, pad_token_id=0, bos_token_id=1, eos_token_id=1)
    return transformers.Qwen3ForCausalLM(config).eval()


def tiny_t5(seed: int = 0) -> transformers.PreTrainedModel:
    torch.manual_seed(seed)
    config = transformers.T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                                   num_heads=4, dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0,
                                   eos_token_id=1)
    return transformers.T5ForConditionalGeneration(config).eval()


def tiny_llama(seed: int = 0) -> transformers.PreTrainedModel:
    """SmolLM2's architecture (Llama), tiny: the static-cache path must fit it as well as Qwen3."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2,
                                      pad_token_id=0, bos_token_id=1, eos_token_id=1, tie_word_embeddings=True)
    return transformers.LlamaForCausalLM(config).eval()


MODELS = {"causal": tiny_causal_lm, "t5": tiny_t5}


def tiny_llama_eager() -> transformers.PreTrainedModel:
    model = tiny_llama()
    model.set_attn_implementation("eager")  # the static path's additive masks suit eager attention as well as SDPA
    return model


DECODER_ONLY = {"qwen3": tiny_causal_lm, "llama": tiny_llama, "llama-eager": tiny_llama_eager}


def random_sids(n_items: int, seed: int, levels: list[tuple[int, int]] = SID_LEVELS) -> np.ndarray:
    """``n_items`` distinct random SIDs, one token range per level, in random row order."""
    rng = np.random.default_rng(seed)
    sids: set[tuple[int, ...]] = set()
    while len(sids) < n_items:
        sids.add(tuple(int(rng.integers(low, high)) for low, high in levels))
    return rng.permutation(np.array(sorted(sids)))


def random_prompts(lengths: list[int], seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(*PROMPT_TOKENS, size=length).tolist() for length in lengths]


def sequence_log_prob(model: transformers.PreTrainedModel, prompt: list[int], sid: list[int]) -> float:
    """log p(sid | prompt) from one plain forward pass, no padding, no cache: the reference for every score."""
    with torch.no_grad():
        if model.config.is_encoder_decoder:
            decoder_ids = torch.tensor([[model.config.decoder_start_token_id, *sid]])
            logits = model(input_ids=torch.tensor([prompt]), decoder_input_ids=decoder_ids).logits[0, :-1]
        else:
            logits = model(input_ids=torch.tensor([prompt + sid])).logits[0, len(prompt) - 1:-1]
    log_probs = logits.double().log_softmax(-1)
    return float(log_probs[torch.arange(len(sid)), torch.tensor(sid)].sum())


# --- the trie -------------------------------------------------------------------------------------------------


def test_hand_made_trie_tables():
    rows = [[11, 20, 30], [10, 20, 31], [10, 21, 30], [10, 20, 30]]  # deliberately not sorted
    trie = SIDTrie.from_item_tokens(rows, item_ids=[3, 8, 9, 7])
    assert trie.depth == 3 and trie.n_items == 4
    assert [t.tolist() for t in trie.level_tokens] == [[10, 11], [20, 21], [30, 31]]
    # level-1 nodes: (10,) (11,); level-2 nodes: (10,20) (10,21) (11,20); leaves in lexicographic order
    assert trie.children[0].tolist() == [[0, 1]]
    assert trie.children[1].tolist() == [[0, 1], [2, -1]]
    assert trie.children[2].tolist() == [[0, 1], [2, -1], [3, -1]]
    assert trie.leaf_items.tolist() == [7, 8, 9, 3]
    assert trie.item_of([10, 21, 30]) == 9 and trie.item_of([11, 20, 30]) == 3
    assert trie.item_of([11, 21, 30]) is None and trie.item_of([10, 20]) is None
    assert trie.allowed_next_tokens([]) == [10, 11]
    assert trie.allowed_next_tokens([11]) == [20]
    assert trie.allowed_next_tokens([10, 20]) == [30, 31]
    assert trie.allowed_next_tokens([12]) == [] and trie.allowed_next_tokens([10, 20, 30]) == []


def test_default_item_ids_are_row_indices():
    trie = SIDTrie.from_item_tokens(np.array([[5, 7], [5, 6], [4, 6]]))
    assert [trie.item_of(sid) for sid in ([5, 7], [5, 6], [4, 6])] == [0, 1, 2]


@pytest.mark.parametrize("rows, message", [
    ([[1, 2, 3], [1, 2, 4], [1, 2, 3]], "duplicate SIDs"),
    ([[1, 2, 3], [1, 2]], "same length"),
    ([[1.0, 2.0]], "integer"),
    ([[1, -2]], "non-negative"),
    (np.zeros((0, 4), dtype=int), "at least one item"),
    ([1, 2, 3], "shape"),
])
def test_bad_sid_tables_are_rejected(rows, message):
    with pytest.raises(GRBenchError, match=message):
        SIDTrie.from_item_tokens(rows)


def test_duplicate_message_names_the_items():
    with pytest.raises(GRBenchError, match=r"items \[20, 40\]"):
        SIDTrie.from_item_tokens([[1, 2], [3, 4], [1, 2]], item_ids=[20, 30, 40])


def test_item_ids_must_match_rows():
    with pytest.raises(GRBenchError, match="one per SID row"):
        SIDTrie.from_item_tokens([[1, 2], [3, 4]], item_ids=[1, 2, 3])


# --- the beam search --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", MODELS)
def test_returned_items_are_valid_distinct_sorted_and_scores_exact(kind):
    model = MODELS[kind]()
    sids = random_sids(150, seed=1)
    item_ids = np.arange(150) * 7 + 1000  # arbitrary ids: the trie must return ids, not rows
    trie = SIDTrie.from_item_tokens(sids, item_ids)
    sid_of = {int(item): row.tolist() for item, row in zip(item_ids, sids)}
    prompts = random_prompts([3, 11, 1, 6, 8], seed=2)
    items, scores = constrained_beam_search(model, prompts, trie, k=8, beam_width=10, batch_size=3)
    assert items.shape == scores.shape == (5, 8) and items.dtype == np.int64
    for user, prompt in enumerate(prompts):
        assert set(items[user]) <= set(sid_of) and len(set(items[user])) == 8
        assert np.all(np.diff(scores[user]) <= 0)
        expected = [sequence_log_prob(model, prompt, sid_of[int(item)]) for item in items[user]]
        np.testing.assert_allclose(scores[user], expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", MODELS)
def test_same_top_k_as_hugging_face_generate(kind):
    """Our beam search and generate's, with the same beam width and the same trie, keep the same beams.

    All SIDs have L tokens and no SID token is EOS, so every generate beam finishes at the same step: its
    length penalty divides every final score by the same L**length_penalty and its early-stopping heuristics
    never trigger before the last step. length_penalty=0 makes generate's sequences_scores the plain summed
    log-probabilities, so the scores can be compared too. Every level has at least as many tokens as beams,
    because with fewer, generate keeps copies of the prompt with score -1e9 as extra beams (ours are -inf).
    """
    model = MODELS[kind]()
    k = 6
    sids = random_sids(120, seed=3)
    trie = SIDTrie.from_item_tokens(sids)
    prompts = random_prompts([4, 9, 2, 13], seed=4)
    items, scores = constrained_beam_search(model, prompts, trie, k=k, beam_width=k)

    if model.config.is_encoder_decoder:
        width = max(map(len, prompts))
        input_ids = torch.tensor([p + [0] * (width - len(p)) for p in prompts])
        attention_mask = torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in prompts])
        sid_start = 1  # after the decoder start token
    else:
        width = max(map(len, prompts))
        input_ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        sid_start = width
    depth = trie.depth
    output = model.generate(input_ids=input_ids, attention_mask=attention_mask, num_beams=k, num_return_sequences=k,
                            do_sample=False, max_new_tokens=depth, min_new_tokens=depth, length_penalty=0.0,
                            prefix_allowed_tokens_fn=prefix_allowed_tokens_fn(trie, sid_start),
                            return_dict_in_generate=True, output_scores=True)
    generated = output.sequences[:, sid_start:].reshape(len(prompts), k, depth)
    generate_items = [[trie.item_of(sid.tolist()) for sid in user] for user in generated]
    assert items.tolist() == generate_items
    np.testing.assert_allclose(scores, output.sequences_scores.reshape(len(prompts), k).numpy(), atol=1e-4)


@pytest.mark.parametrize("kind", MODELS)
def test_wide_beam_equals_brute_force_ranking(kind):
    """With at least as many beams as items, no prefix is ever pruned: the result is the exact ranking."""
    model = MODELS[kind]()
    # 3 first tokens < 16 beams: the first levels have fewer live beams than the beam width
    levels = [(100, 103), (140, 143), (180, 182), (220, 222)]
    sids = random_sids(14, seed=5, levels=levels)
    trie = SIDTrie.from_item_tokens(sids)
    prompts = random_prompts([5, 2, 8], seed=6)
    items, scores = constrained_beam_search(model, prompts, trie, k=14, beam_width=16)
    for user, prompt in enumerate(prompts):
        exact = np.array([sequence_log_prob(model, prompt, sid.tolist()) for sid in sids])
        assert items[user].tolist() == np.argsort(-exact, kind="stable").tolist()
        np.testing.assert_allclose(scores[user], np.sort(exact)[::-1], atol=1e-4)


def test_fewer_items_than_beams():
    model = tiny_causal_lm()
    trie = SIDTrie.from_item_tokens([[101, 150, 190, 230], [101, 151, 190, 230], [102, 150, 190, 230]], [4, 5, 6])
    items, scores = constrained_beam_search(model, random_prompts([3, 5], seed=7), trie, k=3, beam_width=10)
    assert all(sorted(row) == [4, 5, 6] for row in items.tolist())
    assert np.isfinite(scores).all()
    with pytest.raises(GRBenchError, match="more than the 3 items"):
        constrained_beam_search(model, [[5]], trie, k=4, beam_width=10)


def test_batching_does_not_change_results():
    """Padding and cache reordering must not leak between users: one batch or one user at a time, same answer."""
    model = tiny_causal_lm(seed=1)
    trie = SIDTrie.from_item_tokens(random_sids(100, seed=8))
    prompts = random_prompts([1, 9, 4, 12, 7], seed=9)
    together = constrained_beam_search(model, prompts, trie, k=5, batch_size=5)
    alone = constrained_beam_search(model, prompts, trie, k=5, batch_size=1)
    np.testing.assert_array_equal(together[0], alone[0])
    np.testing.assert_allclose(together[1], alone[1], atol=1e-4)


def test_training_mode_is_restored_and_bad_arguments_rejected():
    model = tiny_causal_lm().train()
    trie = SIDTrie.from_item_tokens(random_sids(20, seed=10))
    constrained_beam_search(model, [[3, 4]], trie, k=2, beam_width=4)
    assert model.training
    with pytest.raises(GRBenchError, match="beam width"):
        constrained_beam_search(model, [[3, 4]], trie, k=5, beam_width=4)
    with pytest.raises(GRBenchError, match="empty"):
        constrained_beam_search(model, [[3, 4], []], trie, k=2, beam_width=4)
    too_large = SIDTrie.from_item_tokens([[VOCAB + 1, 5], [7, 5]])
    with pytest.raises(GRBenchError, match="outside the model's vocabulary"):
        constrained_beam_search(model, [[3, 4]], too_large, k=1, beam_width=4)


def test_every_prefix_of_a_returned_sid_is_followed_only_through_the_trie():
    """A model that strongly prefers an invalid SID still gets valid items only."""
    model = tiny_causal_lm()
    trie = SIDTrie.from_item_tokens([[100, 140, 180, 220], [101, 141, 181, 221]], [0, 1])
    with torch.no_grad():  # make token 102/142/182/222 (a SID no item has) overwhelmingly likely
        for token in (102, 142, 182, 222):
            model.lm_head.weight[token] = model.lm_head.weight[token] * 50 + 5
    items, scores = constrained_beam_search(model, random_prompts([4], seed=11), trie, k=2, beam_width=4)
    assert sorted(items[0].tolist()) == [0, 1] and np.isfinite(scores).all()


def test_the_benchmark_counts_the_time_spent_inside_model_forwards():
    """benchmarks/decode.py's breakdown: half of this run sleeps inside forwards, half outside."""
    import time

    from benchmarks.decode import forward_share

    class Sleeper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            time.sleep(0.05)
            return x

    model = Sleeper()

    def run() -> np.ndarray:
        for _ in range(4):
            model(torch.zeros(1))
        time.sleep(0.2)
        return np.zeros(1)

    assert 0.35 < forward_share(model, run) < 0.65
    assert not model._forward_hooks and not model._forward_pre_hooks  # the hooks are gone afterwards


def test_the_benchmark_measures_each_batch_size_and_compares_the_best(capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks/decode.py --batch 2,4: both decoders at each size, identical lists, then best against best."""
    from benchmarks.decode import main

    code = main(["--users", "4", "--batch", "2,4", "--beams", "2", "--items", "40", "--codes", "16",
                 "--prompt-length", "6", "--threads", "1", "--device", "cpu"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "batch 2:" in printed and "batch 4:" in printed
    assert printed.count("identical top-2 lists: 4/4 users") == 2
    assert "each at its best batch size: generate" in printed and "  dynamic: " in printed


def test_the_benchmark_times_both_of_our_decoders(capsys: pytest.CaptureFixture[str]) -> None:
    """--decoder all: generate, the dynamic and the static cache, each against generate, the static one against the
    dynamic one too, and their lists checked against generate's."""
    from benchmarks.decode import main

    code = main(["--users", "5", "--batch", "2", "--beams", "3", "--items", "40", "--codes", "16",
                 "--prompt-length", "6", "--threads", "1", "--device", "cpu", "--decoder", "all"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert printed.count("identical top-3 lists: 5/5 users") == 2
    assert "x generate, " in printed and "x the dynamic cache" in printed
    assert "static cache (CUDA graphs on a GPU):" in printed and ", static " in printed
    assert printed.count("with its captures") == 1  # the static cache's first pass, timed apart


@pytest.mark.parametrize("text", ["0", "16,x", "", "-4"])
def test_the_benchmark_refuses_a_bad_batch_list(text: str) -> None:
    import argparse

    from benchmarks.decode import batch_sizes

    with pytest.raises(argparse.ArgumentTypeError, match="positive integers"):
        batch_sizes(text)


@pytest.mark.parametrize("kind", MODELS)
def test_decoding_passes_the_cache_under_the_installed_transformers_name(kind):
    """transformers 5.24 renamed ``past_key_values`` to ``cache`` and warns on every run given the old name."""
    import logging
    import warnings

    class Messages(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.texts: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.texts.append(record.getMessage())

    model = MODELS[kind]()
    trie = SIDTrie.from_item_tokens(random_sids(40, seed=3))
    handler = Messages()
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            constrained_beam_search(model, random_prompts([4, 2], seed=4), trie, k=3, beam_width=4)
    finally:
        logger.removeHandler(handler)
    assert not [text for text in handler.texts if "past_key_values" in text], handler.texts


BEGIN, END = 270, 271  # SID markers outside every level's token range


def sampled_sids(processors: list, seed: int = 0) -> list[list[int]]:
    """What a tiny model that likes to open a SID samples after prompts that hold a SID of their own."""
    model = tiny_causal_lm(seed)
    prompts = [[*p, BEGIN, *random_sids(1, n)[0].tolist(), END, 5] for n, p in enumerate(random_prompts([6] * 32, 1))]
    input_ids = torch.tensor(prompts)

    def likes_to_open_a_sid(ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores[:, BEGIN] += 6.0
        return scores

    torch.manual_seed(seed)
    output = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), do_sample=True, max_new_tokens=10,
                            logits_processor=transformers.LogitsProcessorList([likes_to_open_a_sid, *processors]),
                            eos_token_id=END, pad_token_id=0)
    return [row[input_ids.shape[1]:] for row in output.tolist()]


def complete_sids(completions: list[list[int]], trie: SIDTrie) -> list[tuple[list[int], list[int]]]:
    """(codes, what follows them) of each completion that opened a SID and had room to finish it."""
    found = []
    for tokens in completions:
        if BEGIN in tokens:
            after = tokens[tokens.index(BEGIN) + 1:]
            if len(after) > trie.depth:
                found.append((after[:trie.depth], after[trie.depth:]))
    return found


def test_sampling_keeps_every_sid_a_completion_opens_valid_and_ends_it():
    trie = SIDTrie.from_item_tokens(random_sids(40, seed=3))
    prompt_length = 6 + 1 + 4 + 1 + 1
    constrained = complete_sids(sampled_sids([SIDAfterMarker(trie, BEGIN, END, prompt_length)]), trie)
    assert len(constrained) > 16  # most rows opened a SID and finished it within 10 tokens
    assert all(trie.item_of(codes) is not None and rest[0] == END for codes, rest in constrained)
    assert all(set(rest[1:]) <= {0} for _, rest in constrained)  # then the row is done (padding)
    free = complete_sids(sampled_sids([]), trie)  # the same sampling without the processor: random codes
    assert free and not any(trie.item_of(codes) is not None for codes, _ in free)


def test_the_sid_processor_leaves_rows_outside_a_sid_alone():
    trie = SIDTrie.from_item_tokens(np.array([[100, 140, 180, 220], [100, 141, 181, 221]]))
    prompt = [5, BEGIN, 100, 140, 180, 220, END]  # the prompt's own SID does not count
    rows = torch.tensor([[*prompt, 7, 8], [*prompt, 7, BEGIN], [*prompt, BEGIN, 100]])
    scores = torch.randn(3, VOCAB)
    out = SIDAfterMarker(trie, BEGIN, END, len(prompt))(rows, scores.clone())
    assert torch.equal(out[0], scores[0])
    assert torch.isfinite(out[1]).nonzero().flatten().tolist() == [100]
    assert torch.isfinite(out[2]).nonzero().flatten().tolist() == [140, 141]


# --- the static-cache path (graphs=True: CUDA graphs on a GPU, the same code eagerly here) ----------------------


@pytest.mark.parametrize("kind", DECODER_ONLY)
@pytest.mark.parametrize("levels, beam_width", [(SID_LEVELS, 10), ([(100, 103), (140, 150), (180, 190)], 8)])
def test_static_cache_gives_the_dynamic_results(kind, levels, beam_width):
    """Same items and scores as the dynamic cache: prompts of different lengths (left padding, padded here to the
    call's longest), a last batch of one user (padded to the batch size), and, in the second case, a first level
    with fewer tokens than beams (spare beam rows) and a three-token SID."""
    model = DECODER_ONLY[kind]()
    trie = SIDTrie.from_item_tokens(random_sids(120, seed=12, levels=levels))
    prompts = random_prompts([3, 11, 1, 6, 8, 14, 2], seed=13)
    dynamic = constrained_beam_search(model, prompts, trie, k=6, beam_width=beam_width, batch_size=3, graphs=False)
    static = constrained_beam_search(model, prompts, trie, k=6, beam_width=beam_width, batch_size=3, graphs=True)
    assert static[0].tolist() == dynamic[0].tolist()
    np.testing.assert_allclose(static[1], dynamic[1], atol=1e-5, rtol=0)


def break_the_reordering(monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.decode

    step = bench.decode._StaticCausalLM._step

    def step_in_place(self: bench.decode._StaticCausalLM) -> torch.Tensor:
        self.parent_rows.copy_(torch.arange(len(self.parent_rows)))  # every beam row keeps its own cache row
        return step(self)

    monkeypatch.setattr(bench.decode._StaticCausalLM, "_step", step_in_place)
    monkeypatch.setattr(bench.decode, "_STATIC_DECODERS", weakref.WeakKeyDictionary())  # none built before it


def test_static_cache_results_depend_on_the_beam_reordering(monkeypatch: pytest.MonkeyPatch):
    """The test above would catch a wrong reordering: leaving the beam rows where they are changes the lists."""
    model = tiny_causal_lm()
    trie = SIDTrie.from_item_tokens(random_sids(120, seed=12))
    prompts = random_prompts([3, 11, 1, 6, 8], seed=13)
    right = constrained_beam_search(model, prompts, trie, k=6, batch_size=3, graphs=True)
    break_the_reordering(monkeypatch)
    wrong = constrained_beam_search(model, prompts, trie, k=6, batch_size=3, graphs=True)
    assert wrong[0].tolist() != right[0].tolist()


def test_static_cache_scores_are_exact_log_probabilities():
    model = tiny_llama(seed=2)
    sids = random_sids(80, seed=14)
    trie = SIDTrie.from_item_tokens(sids)
    prompts = random_prompts([5, 1, 9], seed=15)
    items, scores = constrained_beam_search(model, prompts, trie, k=4, beam_width=6, batch_size=2, graphs=True)
    for user, prompt in enumerate(prompts):
        expected = [sequence_log_prob(model, prompt, sids[item].tolist()) for item in items[user]]
        np.testing.assert_allclose(scores[user], expected, atol=1e-4, rtol=0)


def test_graphs_setting_picks_the_path(monkeypatch: pytest.MonkeyPatch):
    """Auto on the CPU is the dynamic cache; graphs=True is refused where the static path cannot go."""
    import bench.decode

    built = []
    load = bench.decode._StaticCausalLM.load
    monkeypatch.setattr(bench.decode._StaticCausalLM, "load", lambda self, batch: built.append(1) or load(self, batch))
    trie = SIDTrie.from_item_tokens(random_sids(30, seed=16))
    constrained_beam_search(tiny_causal_lm(), [[3, 4]], trie, k=2, beam_width=4)
    assert built == []
    constrained_beam_search(tiny_causal_lm(), [[3, 4]], trie, k=2, beam_width=4, graphs=True)
    assert built == [1]
    with pytest.raises(GRBenchError, match="encoder-decoder"):
        constrained_beam_search(tiny_t5(), [[3, 4]], trie, k=2, beam_width=4, graphs=True)


def test_auto_keeps_the_static_path_only_if_its_first_batch_agrees(monkeypatch: pytest.MonkeyPatch):
    """What auto does on a GPU, run eagerly here: a broken static path is noticed on the first batch and replaced
    by the dynamic cache, with a warning, so its lists come out right anyway."""
    import bench.decode

    monkeypatch.setattr(bench.decode, "_static_wanted", lambda model, device, graphs: graphs is not False)
    model = tiny_causal_lm()
    trie = SIDTrie.from_item_tokens(random_sids(120, seed=12))
    prompts = random_prompts([3, 11, 1, 6, 8], seed=13)
    reference = constrained_beam_search(model, prompts, trie, k=6, batch_size=3, graphs=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a working static path keeps quiet
        kept = constrained_beam_search(model, prompts, trie, k=6, batch_size=3)
    np.testing.assert_allclose(kept[1], reference[1], atol=1e-5, rtol=0)
    break_the_reordering(monkeypatch)
    with pytest.warns(UserWarning, match="scores differ"):
        fallen_back = constrained_beam_search(model, prompts, trie, k=6, batch_size=3)
    assert fallen_back[0].tolist() == reference[0].tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # given up for this model: no second check, no second warning
        assert constrained_beam_search(model, prompts, trie, k=6, batch_size=3)[0].tolist() == reference[0].tolist()


def test_auto_gives_up_the_static_path_when_it_cannot_be_built_or_captured(monkeypatch: pytest.MonkeyPatch):
    """A capture that fails on the GPU (here: the decoder's construction, then a later prompt width's prefill)
    costs one warning, never the ranking; graphs=True raises instead."""
    import bench.decode

    monkeypatch.setattr(bench.decode, "_static_wanted", lambda model, device, graphs: graphs is not False)
    trie = SIDTrie.from_item_tokens(random_sids(120, seed=12))
    prompts = random_prompts([3, 11, 1, 40, 8], seed=13)
    model = tiny_causal_lm()
    reference = constrained_beam_search(model, prompts, trie, k=6, batch_size=3, graphs=False)
    real_prefill_inputs = bench.decode._StaticCausalLM._prefill_inputs

    def capture_fails_past_32_tokens(self: bench.decode._StaticCausalLM, width: int) -> object:
        if width > 32:
            raise RuntimeError("operation not permitted when stream is capturing")
        return real_prefill_inputs(self, width)

    monkeypatch.setattr(bench.decode._StaticCausalLM, "_prefill_inputs", capture_fails_past_32_tokens)
    with pytest.warns(UserWarning, match="RuntimeError: operation not permitted"):
        fallen_back = constrained_beam_search(model, prompts, trie, k=6, batch_size=3)  # the 2nd batch fails
    assert fallen_back[0].tolist() == reference[0].tolist()
    with pytest.raises(RuntimeError, match="capturing"):
        constrained_beam_search(model, prompts, trie, k=6, batch_size=3, graphs=True)

    def no_static_cache(*args: object, **kwargs: object) -> None:
        raise RuntimeError("capture failed")

    other = tiny_causal_lm()
    monkeypatch.setattr(bench.decode._StaticCausalLM, "__init__", no_static_cache)
    with pytest.warns(UserWarning, match="the static cache failed"):
        assert constrained_beam_search(other, prompts, trie, k=6, batch_size=3)[0].tolist() == reference[0].tolist()


def test_static_decoder_is_kept_between_calls_and_each_batch_uses_its_own_prefill_width():
    """The runner decodes 16 users a call, so the decoder (and on a GPU its graphs) outlives a call; a batch of short
    prompts is prefilled at its own bucket (32 tokens) inside a decoder built for longer ones (keys past the
    bucket masked), a call with longer prompts than it has room for gets a new one, and every call still returns
    the dynamic cache's lists."""
    import bench.decode

    model = tiny_llama(seed=3)
    trie = SIDTrie.from_item_tokens(random_sids(100, seed=17))
    short, long = random_prompts([3, 9, 5, 12], seed=18), random_prompts([70, 4, 100], seed=19)

    def both(prompts: list[list[int]]) -> None:
        dynamic = constrained_beam_search(model, prompts, trie, k=5, beam_width=6, batch_size=2, graphs=False)
        static = constrained_beam_search(model, prompts, trie, k=5, beam_width=6, batch_size=2, graphs=True)
        assert static[0].tolist() == dynamic[0].tolist()
        np.testing.assert_allclose(static[1], dynamic[1], atol=1e-5, rtol=0)

    both(short)
    first = bench.decode._STATIC_DECODERS[model]
    both(short[::-1])
    assert bench.decode._STATIC_DECODERS[model] is first and first.width == 32
    both(long)  # 100 tokens: room for 128; [70, 4] prefilled at 96 tokens, [100] at 128
    second = bench.decode._STATIC_DECODERS[model]
    assert second is not first and second.width == 128 and sorted(second.prefills) == [96, 128]
    both(short + long[1:2])  # short batches in the 128-token decoder: a 32-token prefill
    assert bench.decode._STATIC_DECODERS[model] is second and sorted(second.prefills) == [32, 96, 128]
    both(short[:1])  # one user (a runner's last call): the decoder of 2 rows, one of them a copy
    assert bench.decode._STATIC_DECODERS[model] is second


@pytest.mark.parametrize("kind", DECODER_ONLY)
def test_what_is_captured_into_cuda_graphs_never_waits_for_the_gpu(kind):
    """A captured function may not read a tensor's values on the host (``.item()``, data-dependent shapes): the
    capture fails on the GPU. No GPU here, so the prefill and the step run on the meta device, whose tensors have
    shapes but no values, so that any such read raises."""
    from bench.decode import _StaticCausalLM

    with pytest.raises(RuntimeError, match="meta"):
        torch.zeros(1, device="meta").item()  # what the meta device does to a host read
    model = DECODER_ONLY[kind]().to("meta")
    with torch.inference_mode():
        decoder = _StaticCausalLM(model, rows=2, beam_width=3, width=64, depth=4, pad_token_id=0,
                                  device=torch.device("meta"), graphs=False)
        assert decoder._prefill(decoder._prefill_inputs(10)).shape == (2, VOCAB)
        assert decoder._step().shape == (6, VOCAB)
