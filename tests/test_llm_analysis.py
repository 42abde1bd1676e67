"""The PauseRec study's analyses (methods/llm/analysis.py) on the tiny random Qwen3 and synthetic data with text."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch

from bench.errors import GRBenchError
from methods.llm.analysis import _answer, embedding_pca, metadata_recovery, pause_attention
from methods.llm.backbone import PAUSE
from methods.llm.prompts import chat_prompt, item_description, sid_history
from tests.test_llm import expanded, fast_embedding  # noqa: F401 (fast_embedding: autouse)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SID_PATTERN = re.compile(r"<\|sid_begin\|>.*?<\|sid_end\|>")


# --- metadata recovery -------------------------------------------------------------------------------------------


class ForcedGenerate:
    """Stands in for ``model.generate``: reads each prompt's last line, answers for the queried item (right or
    wrong), and records the prompts; checks the batch is left-padded."""

    def __init__(self, tokenizer, sids, catalog, *, wrong: bool = False) -> None:
        self.tokenizer, self.catalog, self.wrong = tokenizer, catalog, wrong
        self.item_of = {sids.sid_string(i): i for i in range(1, sids.n_items + 1)}
        self.prompts: list[str] = []
        self.batch_sizes: list[int] = []

    def answer(self, line: str) -> str:
        item = self.item_of[SID_PATTERN.match(line).group(0)]
        title, categories = self.catalog["title"].iloc[item], list(self.catalog["categories"].iloc[item])
        if line.endswith('its title is "'):
            if self.wrong:
                title = self.catalog["title"].iloc[item % (len(self.catalog) - 1) + 1]
            return f'{title}", its categories are "{" > ".join(categories)}"'  # goes on past the closing quote
        assert line.endswith('its categories are "'), line
        if self.wrong:
            categories = [categories[0], "Nowhere"]
        return " > ".join(categories) + '"'

    def __call__(self, input_ids, attention_mask, max_new_tokens, **kwargs):
        assert kwargs["do_sample"] is False
        assert bool(attention_mask[:, -1].all()), "prompts must be left-padded"
        self.batch_sizes.append(len(input_ids))
        pad = self.tokenizer.pad_token_id
        answers = []
        for ids, mask in zip(input_ids, attention_mask):
            prompt = self.tokenizer.decode(ids[mask.bool()])
            self.prompts.append(prompt)
            answer = self.tokenizer(self.answer(prompt.split("\n")[-1]), add_special_tokens=False)["input_ids"]
            answers.append(answer[:max_new_tokens])
        width = max(map(len, answers))
        new = torch.tensor([a + [pad] * (width - len(a)) for a in answers])
        return torch.cat([input_ids, new], dim=1)


@pytest.mark.parametrize("wrong", [False, True])
def test_metadata_recovery_scores_exact_matches(monkeypatch, wrong):
    data, sids, model, tokenizer, _ = expanded()
    forced = ForcedGenerate(tokenizer, sids, data.catalog, wrong=wrong)
    monkeypatch.setattr(model, "generate", forced)
    items = list(range(1, 13))
    result = metadata_recovery(model, tokenizer, sids, data.catalog, items, max_new_tokens=200, batch_size=5)
    assert result["items"] == 12 and result["skipped_no_title"] == 0 == result["skipped_no_categories"]
    assert forced.batch_sizes == [5, 5, 5, 5, 4]  # 12 title and 12 category queries
    assert result["title_exact"] == (0.0 if wrong else 1.0)
    assert result["category_level_1"] == 1.0  # the wrong answers keep the top level
    assert result["category_level_2"] == (0.0 if wrong else 1.0)
    assert result["category_level_3"] is None  # synthetic categories have two levels
    assert result["category_level_counts"] == {1: 12, 2: 12, 3: 0}
    assert result["title_unterminated"] == 0 == result["category_unterminated"]
    item, expected, generated = result["examples"][0]
    assert item == 1 and expected == data.catalog["title"].iloc[1] and (generated == expected) != wrong


def test_prompts_are_cpt_lines_and_shots_never_show_the_queried_item(monkeypatch):
    data, sids, model, tokenizer, _ = expanded()
    forced = ForcedGenerate(tokenizer, sids, data.catalog)
    monkeypatch.setattr(model, "generate", forced)
    items = list(range(1, 21))
    metadata_recovery(model, tokenizer, sids, data.catalog, items, shots=3, seed=4)
    assert len(forced.prompts) == 40
    titles, categories = forced.prompts[:20], forced.prompts[20:]
    for item, prompt in zip(items + items, titles + categories):
        lines = prompt.split("\n")
        assert len(lines) == 4
        assert SID_PATTERN.findall(prompt).count(sids.sid_string(item)) == 1  # in the query line only
        field = ', its title is "' if prompt in titles else ', its categories are "'
        assert lines[-1] == sids.sid_string(item) + field
        shots = [forced.item_of[SID_PATTERN.match(line).group(0)] for line in lines[:-1]]
        assert item not in shots and len(set(shots)) == 3
        for shot, line in zip(shots, lines[:-1]):
            full = item_description(sids, data.catalog, shot)
            assert line == full if prompt in titles else line == full.split(", its title is")[0] + \
                f', its categories are "{" > ".join(data.catalog["categories"].iloc[shot])}"'
    # the same seed draws the same shots, another seed others
    again = ForcedGenerate(tokenizer, sids, data.catalog)
    monkeypatch.setattr(model, "generate", again)
    metadata_recovery(model, tokenizer, sids, data.catalog, items, shots=3, seed=4)
    assert again.prompts == forced.prompts
    other = ForcedGenerate(tokenizer, sids, data.catalog)
    monkeypatch.setattr(model, "generate", other)
    metadata_recovery(model, tokenizer, sids, data.catalog, items, shots=3, seed=5)
    assert other.prompts != forced.prompts


def test_items_without_text_are_skipped_counted_and_never_shots(monkeypatch):
    data, sids, model, tokenizer, _ = expanded()
    catalog = data.catalog.copy()
    catalog.loc[3, "title"] = None
    catalog.at[4, "categories"] = []
    forced = ForcedGenerate(tokenizer, sids, catalog)
    monkeypatch.setattr(model, "generate", forced)
    result = metadata_recovery(model, tokenizer, sids, catalog, range(1, 21))
    assert result["items"] == 19 and result["skipped_no_title"] == 1 and result["skipped_no_categories"] == 1
    assert result["title_exact"] == 1.0 and result["category_level_counts"] == {1: 19, 2: 19, 3: 0}
    titles, categories = forced.prompts[:19], forced.prompts[19:]
    assert not any(sids.sid_string(3) in prompt for prompt in titles)
    assert not any(sids.sid_string(4) in prompt for prompt in categories)


def test_answer_ends_at_the_closing_quote():
    assert _answer('Brush 12" wide", its categories are "A"') == ('Brush 12" wide', True)
    assert _answer('A > B"') == ("A > B", True)
    assert _answer('A > B"\n<|sid_begin|>') == ("A > B", True)
    assert _answer("Brush, no quote\nnext line") == ("Brush, no quote", False)


def test_metadata_recovery_decodes_greedily_with_the_real_model():
    data, sids, model, tokenizer, _ = expanded()
    model.train()
    padding_side = tokenizer.padding_side
    first = metadata_recovery(model, tokenizer, sids, data.catalog, [1, 2, 3], max_new_tokens=6, batch_size=2)
    second = metadata_recovery(model, tokenizer, sids, data.catalog, [1, 2, 3], max_new_tokens=6, batch_size=3)
    assert first == second  # greedy, and batching (left padding) does not change the answers
    assert first["title_exact"] == 0.0 and first["title_unterminated"] == 3  # a random model knows nothing
    assert model.training and tokenizer.padding_side == padding_side  # both restored


# --- embedding PCA -----------------------------------------------------------------------------------------------


def test_embedding_pca_plots_and_measures_the_pause_embedding(tmp_path):
    _, _, model, _, vocab = expanded()
    codes = torch.as_tensor(vocab.code_ids)
    with torch.no_grad():  # as CPT would: the SID rows move away from the text mean, <pause> stays
        weight = model.get_input_embeddings().weight
        weight[codes] += torch.randn(len(codes), weight.shape[1], generator=torch.Generator().manual_seed(0))
    moved = copy.deepcopy(model)
    with torch.no_grad():
        weight = moved.get_input_embeddings().weight
        weight[vocab.pause_id] = weight[codes].mean(0)
    path = tmp_path / "figures" / "pca.png"
    stats = embedding_pca({"after CPT": model, "pause at SID mean": moved}, vocab, path, text_sample=100)
    assert path.read_bytes().startswith(PNG_MAGIC) and path.stat().st_size > 1000
    assert sorted(p.name for p in path.parent.iterdir()) == ["pca.png"]  # no temporary file left
    import matplotlib.image

    assert matplotlib.image.imread(path).ndim == 3
    fresh, sid_mean = stats["after CPT"], stats["pause at SID mean"]
    assert fresh["pause_to_text_mean"] < 1e-3 < fresh["pause_to_sid_mean"]  # expansion put <pause> at the text mean
    assert sid_mean["pause_to_sid_mean"] == pytest.approx(0.0, abs=1e-6)
    assert sid_mean["pause_to_text_mean"] == pytest.approx(fresh["text_mean_to_sid_mean"], rel=1e-4)
    for stage in stats.values():
        ratio = stage["explained_variance_ratio"]
        assert len(ratio) == 2 and 0 < ratio[1] <= ratio[0] and sum(ratio) <= 1 + 1e-6


def test_embedding_pca_needs_a_model(tmp_path):
    _, _, _, _, vocab = expanded()
    with pytest.raises(GRBenchError, match="at least one model"):
        embedding_pca({}, vocab, tmp_path / "pca.png")
    assert not (tmp_path / "pca.png").exists()


# --- pause attention ---------------------------------------------------------------------------------------------


def pause_prompt(tokenizer, sids, k: int = 3) -> list[int]:
    text = chat_prompt(tokenizer, sid_history(sids, [1, 2, 3]), assistant_prefix="<think>" + PAUSE * k + "</think> ")
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("layer", [-1, 0])
def test_pause_attention_is_causal_and_averages_the_heads_of_one_layer(tmp_path, layer):
    _, sids, model, tokenizer, vocab = expanded()
    ids = pause_prompt(tokenizer, sids)
    positions = [i for i, token in enumerate(ids) if token == vocab.pause_id]
    assert len(positions) == 3 and len(ids) > 64  # enough tokens for the x labels to be thinned
    path = tmp_path / "attention.png"
    rows = pause_attention(model, tokenizer, ids, vocab.pause_id, path, layer=layer)
    assert rows.shape == (3, len(ids))
    for row, position in zip(rows, positions):
        assert row[: position + 1].sum() == pytest.approx(1.0, abs=1e-5)
        assert np.all(row[position + 1:] == 0)
    assert model.config._attn_implementation == "sdpa"  # restored
    assert path.read_bytes().startswith(PNG_MAGIC)
    # independently: eager attention of that layer, heads averaged
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        attentions = eager(input_ids=torch.tensor([ids]), output_attentions=True).attentions
    np.testing.assert_allclose(rows, attentions[layer][0].mean(0)[positions].numpy(), atol=1e-6)
    other = attentions[1 if layer == 0 else 0][0].mean(0)[positions].numpy()
    assert not np.allclose(rows, other, atol=1e-4)


def test_pause_attention_without_a_pause_is_a_clear_error(tmp_path):
    _, sids, model, tokenizer, vocab = expanded()
    ids = pause_prompt(tokenizer, sids, k=0)
    with pytest.raises(GRBenchError, match="no pause token"):
        pause_attention(model, tokenizer, ids, vocab.pause_id, tmp_path / "attention.png")
    assert not (tmp_path / "attention.png").exists()
    assert model.config._attn_implementation == "sdpa"
