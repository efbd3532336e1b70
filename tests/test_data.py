import pytest
import torch

from revbench.data import TokenStream, Workload, default_text_path


def test_synthetic_stream_is_deterministic_with_fixed_shape() -> None:
    w = Workload(batch=3, seq=17, data="synthetic", seed=5)
    a, b = TokenStream(w, 1000), TokenStream(w, 1000)
    assert a.batch(4).shape == (3, 17)
    assert torch.equal(a.batch(4), b.batch(4))
    assert not torch.equal(a.batch(4), a.batch(5))
    assert int(a.batch(0).max()) < 1000


def test_text_stream_reads_cpython_docs_byte_level() -> None:
    assert default_text_path().is_file()
    stream = TokenStream(Workload(batch=2, seq=64), 256)
    batch = stream.batch(0)
    assert batch.shape == (2, 64)
    assert bytes(batch[0, :5].tolist()) == default_text_path().read_bytes()[:5]


def test_heldout_split_is_disjoint_tail(tmp_path) -> None:
    path = tmp_path / "t.txt"
    path.write_bytes(bytes(range(100)) * 10)
    w = Workload(batch=1, seq=10, text_path=str(path), heldout_fraction=0.2)
    assert int(TokenStream(w, 256, split="heldout").batch(0)[0, 0]) == 0  # starts at byte 800
    assert len(TokenStream(w, 256, split="train")._tokens) == 800


def test_bad_inputs_are_named(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown data kind 'wiki'"):
        Workload(data="wiki")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TokenStream(Workload(text_path=str(tmp_path / "missing.txt")), 256)
    with pytest.raises(ValueError, match="vocabulary of at least 256"):
        TokenStream(Workload(), 100)


def _word_tokenizer(directory) -> str:
    """A small BPE tokenizer trained on the pydoc text and saved as a local Hugging Face tokenizer directory."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    lines = default_text_path().read_text(encoding="utf-8").splitlines()[:2000]
    tokenizer.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]"]))
    PreTrainedTokenizerFast(tokenizer_object=tokenizer).save_pretrained(directory)
    return str(directory)


def test_a_tokenizer_turns_the_text_into_its_own_ids(tmp_path) -> None:
    path = _word_tokenizer(tmp_path / "tok")
    workload = Workload(batch=2, seq=16, tokenizer=path)
    batch = TokenStream(workload, vocab_size=300).batch(0)
    assert batch.shape == (2, 16) and int(batch.max()) < 300
    assert not torch.equal(batch, TokenStream(Workload(batch=2, seq=16), vocab_size=300).batch(0))  # not bytes
    with pytest.raises(ValueError, match="beyond the model's vocabulary of 100"):
        TokenStream(workload, vocab_size=100)
    with pytest.raises(ValueError, match="needs data='text'"):
        Workload(data="synthetic", tokenizer=path)
    with pytest.raises(ValueError, match="unknown tokenizer 'nope'"):
        TokenStream(Workload(tokenizer="nope"), vocab_size=300)
