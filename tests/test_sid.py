from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np
import pytest

import bench.sid as sid
from bench.cli import main
from bench.data import load_dataset
from bench.data.base import Dataset, make_catalog, make_interactions
from bench.errors import GRBenchError
from bench.sid import (
    SidConfig,
    add_uniqueness_code,
    build_semantic_ids,
    collision_stats,
    effective_codebook_size,
    item_embeddings,
    level_stats,
)
from bench.split import TrainData, leave_last_out

SYNTHETIC = "synthetic:users=60,items=40"
TINY = SidConfig(codebook_size=8, latent_dim=8, hidden_dims=(32,), epochs=5, batch_size=64, svd_dim=8)


def fake_embed(texts, encoder="", batch_size=64, track=None) -> np.ndarray:
    """A deterministic stand-in for the sentence encoder: a random vector seeded by the text."""
    return np.stack([np.random.default_rng(int(hashlib.sha256(t.encode()).hexdigest()[:8], 16)).normal(size=16)
                     for t in texts]).astype(np.float32)


@pytest.fixture
def fake_encoder(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Replaces the sentence encoder; the returned list grows by one per embedding call."""
    calls: list[int] = []

    def embed(texts, *args, **kwargs):
        calls.append(len(texts))
        return fake_embed(texts)

    monkeypatch.setattr(sid, "embed_texts", embed)
    return calls


def synthetic_train() -> TrainData:
    return leave_last_out(load_dataset(SYNTHETIC)).train_view()


def dataset_from_sequences(sequences: dict[str, list[str]], catalog_rows: list[dict] | None = None) -> TrainData:
    users, items, times = [], [], []
    for user, seq in sequences.items():
        users += [user] * len(seq)
        items += seq
        times += list(range(len(seq)))
    rows = catalog_rows or [{"item": i} for i in sorted(set(items))]
    return leave_last_out(Dataset("hand", make_interactions(users, items, times), make_catalog(rows),
                                  source="test")).train_view()


@pytest.mark.parametrize("quantizer", ["rqvae", "rkmeans"])
def test_every_item_gets_a_unique_sid_within_its_codebooks(fake_encoder, quantizer):
    train = synthetic_train()
    sids = build_semantic_ids(train, replace(TINY, quantizer=quantizer), use_cache=False)
    assert sids.codes.shape == (train.n_items + 1, 4) and sids.source == "text:all-MiniLM-L6-v2"
    assert (sids.codes[0] == -1).all()  # padding row is never a valid SID
    items = sids.codes[1:]
    assert len(np.unique(items, axis=0)) == train.n_items
    assert sids.codebook_sizes[:3] == (8, 8, 8)
    assert ((items >= 0) & (items < np.array(sids.codebook_sizes))).all()
    assert sids.codebook_sizes[3] == sids.stats["max_collision_group"]
    assert sids.summary()["source"] == sids.source and sids.config["seed"] == 0


def test_same_seed_gives_same_codes_and_seed_and_config_change_the_key(fake_encoder):
    train = synthetic_train()
    first = build_semantic_ids(train, TINY, seed=3, use_cache=False)
    again = build_semantic_ids(train, TINY, seed=3, use_cache=False)
    np.testing.assert_array_equal(first.codes, again.codes)
    other_seed = build_semantic_ids(train, TINY, seed=4, use_cache=False)
    other_config = build_semantic_ids(train, replace(TINY, quantizer="rkmeans"), seed=3, use_cache=False)
    assert len({first.fingerprint, other_seed.fingerprint, other_config.fingerprint}) == 3


@pytest.mark.parametrize("installed", ["1.34.1", "2.0.0", "1.31.6"])
def test_rqvae_refuses_a_vector_quantize_version_whose_dead_code_rule_differs(fake_encoder, monkeypatch, installed):
    """1.34 re-seeds dead codes by a ratio of the mean count: other SIDs under the same cache key, never silently."""
    from importlib import metadata

    real_version = metadata.version
    monkeypatch.setattr(metadata, "version",
                        lambda name: installed if name == "vector-quantize-pytorch" else real_version(name))
    with pytest.raises(GRBenchError, match=rf"vector-quantize-pytorch {installed} is installed.*>=1\.32,<1\.34"):
        build_semantic_ids(synthetic_train(), TINY, use_cache=False)


def test_second_build_loads_the_cache_and_a_new_config_recomputes(fake_encoder, monkeypatch):
    train = synthetic_train()
    built = build_semantic_ids(train, TINY)
    assert not built.from_cache and (built.cache_path / "codes.npz").is_file()

    def fail(*args, **kwargs):
        raise AssertionError("recomputed although cached")

    monkeypatch.setitem(sid.QUANTIZERS, "rqvae", fail)
    monkeypatch.setattr(sid, "embed_texts", fail)
    loaded = build_semantic_ids(train, TINY)
    assert loaded.from_cache and loaded.fingerprint == built.fingerprint
    np.testing.assert_array_equal(loaded.codes, built.codes)
    assert loaded.codebook_sizes == built.codebook_sizes and loaded.stats == built.stats
    with pytest.raises(AssertionError, match="recomputed"):
        build_semantic_ids(train, replace(TINY, epochs=6))
    with pytest.raises(AssertionError, match="recomputed"):
        build_semantic_ids(train, TINY, seed=1)


def test_corrupt_cache_file_is_named_and_rebuilt(fake_encoder, capsys):
    train = synthetic_train()
    built = build_semantic_ids(train, replace(TINY, quantizer="rkmeans"))
    codes_file = built.cache_path / "codes.npz"
    codes_file.write_bytes(b"not a zip file")
    rebuilt = build_semantic_ids(train, replace(TINY, quantizer="rkmeans"))
    assert f"{codes_file} is unreadable" in capsys.readouterr().err
    assert not rebuilt.from_cache
    np.testing.assert_array_equal(rebuilt.codes, built.codes)
    assert build_semantic_ids(train, replace(TINY, quantizer="rkmeans")).from_cache  # repaired


def test_collision_statistics_on_a_hand_made_example():
    prefixes = np.array([[0, 0, 0], [0, 0, 0], [0, 0, 1], [1, 2, 3], [0, 0, 0]])
    assert collision_stats(prefixes) == {"items": 5, "unique_prefixes": 3, "collision_rate": 0.6,
                                         "max_collision_group": 3}
    codes = add_uniqueness_code(prefixes)
    np.testing.assert_array_equal(codes[:, 3], [0, 1, 0, 0, 2])  # index within the group, in item order
    first = level_stats(codes, (4, 4, 4, 3))[0]
    assert (first["used"], first["usage"]) == (2, 0.5)
    assert first["entropy_bits"] == pytest.approx(-(0.8 * np.log2(0.8) + 0.2 * np.log2(0.2)))
    assert first["max_entropy_bits"] == 2.0
    assert collision_stats(np.array([[0, 1, 2], [0, 1, 3]]))["collision_rate"] == 0.0


def test_codebook_size_adapts_to_tiny_catalogs():
    assert effective_codebook_size(256, 1682) == 256
    assert effective_codebook_size(256, 40) == 10
    assert effective_codebook_size(256, 3) == 2
    assert effective_codebook_size(256, 1) == 1


def test_collaborative_source_uses_training_sequences_only():
    sequences = {"u1": ["a", "b", "c", "d", "e"], "u2": ["b", "c", "a", "d", "e"], "u3": ["c", "d", "e", "a", "b"],
                 "u4": ["d", "e", "a", "b", "c"]}
    other_targets = {user: seq[:-2] + seq[-2:][::-1] for user, seq in sequences.items()}  # swap valid/test
    other_targets["u1"] = ["a", "b", "c", "a", "a"]
    other_training = {**sequences, "u1": ["a", "e", "c", "d", "e"]}
    config = replace(TINY, source="collaborative", svd_dim=3)
    base = dataset_from_sequences(sequences)
    embed = [item_embeddings(dataset_from_sequences(s), "collaborative", config, seed=0)
             for s in (sequences, other_targets, other_training)]
    assert base.fingerprint != dataset_from_sequences(other_targets).fingerprint
    np.testing.assert_array_equal(embed[0], embed[1])  # targets differ, embedding does not
    assert not np.allclose(embed[0], embed[2])  # the embedding does react to training sequences
    sids = build_semantic_ids(base, config, use_cache=False)
    assert sids.source == "collaborative" and len(np.unique(sids.codes[1:], axis=0)) == base.n_items


def test_attributes_with_cooccurrence_are_used_when_titles_are_missing_and_cooccurrence_when_both_are():
    sequences = {f"u{n}": ["a", "b", "c", "d"][n % 2:] + ["e", "f"] for n in range(6)}
    attributes = {"a": [1, 2], "b": [2], "c": [3], "d": [3, 4], "e": [1], "f": [4, 5]}
    with_attributes = dataset_from_sequences(sequences, [{"item": i, "attributes": a} for i, a in attributes.items()])
    sids = build_semantic_ids(with_attributes, replace(TINY, svd_dim=3), use_cache=False)
    assert sids.source == "attributes+collaborative" and sids.stats["items_with_zero_vector"] == 0
    alone = build_semantic_ids(with_attributes, replace(TINY, svd_dim=3, source="attributes"), use_cache=False)
    assert alone.source == "attributes"
    bare = dataset_from_sequences(sequences)
    assert build_semantic_ids(bare, replace(TINY, quantizer="rkmeans"), use_cache=False).source == "collaborative"
    with pytest.raises(GRBenchError, match="no item titles"):
        build_semantic_ids(bare, replace(TINY, source="text"), use_cache=False)


def test_attributes_and_collaborative_source_puts_both_halves_side_by_side():
    sequences = {f"u{n}": ["a", "b", "c", "d"][n % 2:] + ["e", "f"] for n in range(6)}
    attributes = {"a": [1, 2], "b": [2], "c": [3], "d": [3, 4], "e": [1], "f": [4, 5]}
    data = dataset_from_sequences(sequences, [{"item": i, "attributes": a} for i, a in attributes.items()])
    config = replace(TINY, svd_dim=3)
    both = item_embeddings(data, "attributes+collaborative", config, seed=0)
    halves = [item_embeddings(data, kind, config, seed=0) for kind in ("attributes", "collaborative")]
    side_by_side = np.concatenate(halves, axis=1)  # each half unit length (or zero), the whole normalised again
    np.testing.assert_allclose(both, side_by_side / np.linalg.norm(side_by_side, axis=1, keepdims=True), atol=1e-6)
    other_targets = {user: seq[:-2] + seq[-2:][::-1] for user, seq in sequences.items()}  # swap valid/test
    moved = dataset_from_sequences(other_targets, [{"item": i, "attributes": a} for i, a in attributes.items()])
    np.testing.assert_allclose(item_embeddings(moved, "attributes+collaborative", config, seed=0), both, atol=1e-6)
    sids = build_semantic_ids(data, replace(config, source="attributes+collaborative"), use_cache=False)
    assert sids.source == "attributes+collaborative" and len(np.unique(sids.codes[1:], axis=0)) == data.n_items
    with pytest.raises(GRBenchError, match="no item attributes"):
        build_semantic_ids(dataset_from_sequences(sequences), replace(config, source="attributes+collaborative"),
                           use_cache=False)


def test_token_names_strings_and_id_matrices(fake_encoder):
    train = synthetic_train()
    sids = build_semantic_ids(train, replace(TINY, quantizer="rkmeans"), use_cache=False)
    names = sids.token_names()
    assert len(names) == sids.n_tokens and names[0] == "<s_a_0>" and names[8] == "<s_b_0>"
    a, b, c, d = sids.codes[1]
    assert sids.item_tokens(1) == [f"<s_a_{a}>", f"<s_b_{b}>", f"<s_c_{c}>", f"<s_d_{d}>"]
    assert sids.sid_string(1) == "<|sid_begin|>" + "".join(sids.item_tokens(1)) + "<|sid_end|>"
    with pytest.raises(GRBenchError, match="padding"):
        sids.item_tokens(0)

    stacked = sids.token_id_matrix(offset=100)
    assert (stacked[0] == -1).all()
    np.testing.assert_array_equal(stacked[1], [100 + a, 108 + b, 116 + c, 124 + d])

    class Tokenizer:  # the two members of a Hugging Face tokenizer that the mapping uses
        unk_token_id = 0
        vocab = {name: 1000 + n for n, name in enumerate(names)}

        def convert_tokens_to_ids(self, tokens):
            return [self.vocab.get(t, self.unk_token_id) for t in tokens]

    np.testing.assert_array_equal(sids.token_id_matrix(Tokenizer()), np.where(stacked >= 0, stacked + 900, -1))
    Tokenizer.vocab = {}
    with pytest.raises(GRBenchError, match="not in the tokenizer"):
        sids.token_id_matrix(Tokenizer())


def test_invalid_config_is_a_clear_error():
    with pytest.raises(GRBenchError, match="quantizer 'vq'"):
        SidConfig(quantizer="vq")
    with pytest.raises(GRBenchError, match="batch_size"):
        SidConfig(batch_size=16)


def test_cli_prints_statistics_and_examples(fake_encoder, capsys):
    args = ["sids", "--dataset", SYNTHETIC, "--quantizer", "rqvae", "--epochs", "3", "--examples", "2"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "collision rate" in captured.out and "entropy (bits)" in captured.out
    assert "| a " in captured.out and "<s_a_" in captured.out and "Red Lamp 0" in captured.out
    assert "built in" in captured.err
    assert main(args) == 0
    assert "loaded from cache" in capsys.readouterr().err
    assert main(["sids", "--dataset", SYNTHETIC, "--quantizer", "nope"]) == 2
    assert "quantizer 'nope'" in capsys.readouterr().err


def test_cli_sets_every_source_the_dataset_has_side_by_side(fake_encoder, capsys):
    """`--source all` builds the SIDs of each source the data has (synthetic items have titles, no attribute ids)
    and prints one column per source; an unknown source in a list fails before any work."""
    assert main(["sids", "--dataset", SYNTHETIC, "--source", "all", "--epochs", "3"]) == 0
    printed = capsys.readouterr()
    header = printed.out.splitlines()[2]
    assert [cell.strip() for cell in header.split("|")[2:4]] == ["text:all-MiniLM-L6-v2", "collaborative"]
    assert "attributes" not in header
    assert "collision rate before the last code" in printed.out and "level c: codes used (usage)" in printed.out
    assert printed.err.count("built in") == 2
    assert main(["sids", "--dataset", SYNTHETIC, "--source", "collaborative,nope"]) == 2
    assert "source 'nope'" in capsys.readouterr().err
    assert len(fake_encoder) == 1


@pytest.mark.real
def test_packaged_minilm_embeds_movie_titles_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    catalog = load_dataset("ml-100k").catalog
    texts = sid.item_texts(catalog.iloc[:9].reset_index(drop=True))  # row 0 plays the padding row
    vectors = sid.embed_texts(texts)
    assert vectors.shape == (8, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert len(np.unique(vectors.round(4), axis=0)) == 8
