"""A local transformers causal LM (a folder or a cached hub id, optionally with a LoRA adapter)
as a TextModel.

Generation is batched: prompts x samples rows, left padded, in batches of `batch_size` rows,
which is what makes a small model fast on CPU (one row at a time is dominated by per-step
overhead). Each distinct prompt of a batch is prefilled once, alone, and its keys and values
copied into a static KV cache for all of its rows, so the samples of a prompt share one
prefill (1.6x faster at 4 samples per prompt on CPU). Decoding then runs in an own loop that
drops finished rows from the batch (`_decode`). Randomness is per row: each row samples with
its own generator seeded from (decoding seed, sample index, prompt), so sample j of a prompt
does not depend on the batch it ran in (the TextModel contract) and cached and fresh samples
mix freely. That holds up to float rounding: a padded batch sums attention in another order
than the prompt alone, so a draw within rounding of a token's boundary can fall the other way
(one profile of 64 in `bench/generation_benchmark.py --prompts 64 --batch-size 64`). A
resumed run recomputes the same batches, so it still reproduces an uninterrupted one.

torch, transformers and peft are imported when a model is built, not when this module is.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lettingo_dagster.models.base import ChatPrompt, Decoding, Generation, ModelError, TextModel

if TYPE_CHECKING:
    import torch

MODEL_DTYPES = ("auto", "float32", "bfloat16")  # LocalCausalLM(dtype=...)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
MODEL_FILES = frozenset(
    {
        "config.json",
        "generation_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.json",
        "vocab.txt",
        "merges.txt",
        "spiece.model",
        "chat_template.jinja",
        "chat_template.json",
        "adapter_config.json",
    }
)
# Written next to weights by trainers but never read when loading.
IGNORED_FILES = frozenset({"training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth"})
_TRUE = {"1", "true", "yes", "on"}

# Rows sharing at least this many leading tokens are scored from one prefix computation.
SHARED_PREFIX_MIN_TOKENS = 32
# A decoding batch drops its finished rows once they are this share of it: dropping copies the
# KV cache, so dropping each row as it finishes would cost more than it saves.
COMPACT_FINISHED_SHARE = 0.25
# (resolved path, size, mtime_ns) -> sha256 of the content: weights are hashed once per process.
_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def _is_model_file(path: Path) -> bool:
    name = path.name
    if name in IGNORED_FILES or not path.is_file():
        return False
    return (
        name.endswith(WEIGHT_SUFFIXES)
        or name in MODEL_FILES
        or name.startswith("tokenizer")
        or name.endswith(".index.json")
    )


def file_digest(path: Path) -> str:
    """sha256 of a file's content, cached by (path, size, mtime)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_HASHES:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _FILE_HASHES[key] = digest.hexdigest()
    return _FILE_HASHES[key]


def folder_digest(folder: Path) -> str:
    """sha256 over the names and content hashes of a folder's weight, config and tokenizer
    files (not READMEs, logs or trainer state, which do not change outputs)."""
    digest = hashlib.sha256()
    files = sorted(p for p in folder.iterdir() if _is_model_file(p))
    if not files:
        raise ModelError(f"{folder}: no model files to fingerprint")
    for path in files:
        digest.update(f"{path.name}\0{file_digest(path)}\n".encode())
    return digest.hexdigest()


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def _row_seed(seed: int, sample_index: int, prompt: ChatPrompt) -> int:
    digest = hashlib.sha256(f"{seed}:{sample_index}:{prompt.digest()}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _left_pad(
    rows: Sequence[Sequence[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input ids, attention mask and position ids (0 at each row's first real token)."""
    import torch

    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        if row:
            ids[r, width - len(row) :] = torch.tensor(list(row), dtype=torch.long)
            mask[r, width - len(row) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


class _SeededSampler:
    """Samples each row with the row's own generator (temperature, then nucleus). Generators
    live on the CPU, so a row draws the same numbers on every device. As a logits processor it
    leaves only the drawn token, so `generate`'s greedy decoding takes it."""

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float) -> None:
        import torch

        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        self.temperature = temperature
        self.top_p = top_p

    def draw(self, scores: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
        """One token per row of `scores`; `rows` names each one's generator."""
        import torch

        logits = scores.float() / self.temperature
        if self.top_p < 1.0:
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            sorted_probs = sorted_logits.softmax(-1)
            # Drop a token when the mass before it already reaches top_p (the best always stays).
            drop = (sorted_probs.cumsum(-1) - sorted_probs) >= self.top_p
            sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
            logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
        cdf = logits.softmax(-1).cumsum(-1)
        draws = torch.stack([torch.rand((), generator=self.generators[r]) for r in rows])
        # Inverse CDF: the first token whose cumulative mass exceeds the draw (never a 0-mass one).
        chosen = torch.searchsorted(
            cdf, (draws.to(cdf.device) * cdf[:, -1]).unsqueeze(-1), right=True
        )
        return chosen.clamp(max=cdf.shape[-1] - 1).squeeze(-1)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        import torch

        chosen = self.draw(scores, range(len(self.generators)))
        out = torch.full_like(scores, float("-inf"))
        return out.scatter(-1, chosen.unsqueeze(-1), 0.0)


class LocalCausalLM(TextModel):
    """Any causal LM transformers can load, from a local folder or a cached hub id."""

    def __init__(
        self,
        path: str | Path,
        *,
        adapter: str | Path | None = None,
        device: str = "auto",
        torch_threads: int | None = None,
        batch_size: int = 16,
        name: str | None = None,
        dtype: str = "auto",
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if dtype not in MODEL_DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(MODEL_DTYPES)}, not {dtype!r}")
        if torch_threads:
            # Oversubscribing shared cores made generation 7x slower.
            torch.set_num_threads(torch_threads)
        self.path = str(path)
        self.adapter = str(adapter) if adapter is not None else None
        self.batch_size = batch_size
        self.device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        )
        self.name = name or Path(self.path).name + (
            f"+{Path(self.adapter).name}" if self.adapter else ""
        )
        self._is_folder = Path(self.path).is_dir()
        local_only = self._is_folder or _offline()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(
                self.path, trust_remote_code=False, local_files_only=local_only
            )
            model = AutoModelForCausalLM.from_pretrained(
                self.path,
                trust_remote_code=False,
                local_files_only=local_only,
                # auto: float32 on CPU (half precision there is slow or unsupported for many
                # kernels), the checkpoint's own dtype on CUDA; or the one asked for.
                dtype=(
                    (torch.float32 if self.device.type == "cpu" else "auto")
                    if dtype == "auto"
                    else getattr(torch, dtype)
                ),
            )
            if self.adapter is not None:
                from peft import PeftModel

                with warnings.catch_warnings():  # peft 0.21 calls an API transformers 5 deprecated
                    warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
                    model = PeftModel.from_pretrained(model, self.adapter, is_trainable=False)
                # Merged LoRA weights give the same outputs without the adapter's extra matmuls.
                model = model.merge_and_unload()
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load model {self.path!r}: {exc}") from exc
        self.model = model.to(self.device).eval()
        self.model.requires_grad_(False)
        # Left padding keeps every row's last prompt token at the same position for generation.
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.eos_ids = self._eos_ids()
        self._fingerprint: str | None = None
        self._static_cache = True
        self._prefix_cache = True
        self._shared_prefix = True
        self._own_decode = True
        # transformers 5.2x renamed generate's `past_key_values` to `cache`; take what it has.
        parameters = inspect.signature(self.model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in parameters else "past_key_values"

    # ------------------------------------------------------------------ identity

    def _eos_ids(self) -> frozenset[int]:
        ids = {self.tokenizer.eos_token_id}
        configured = getattr(self.model.generation_config, "eos_token_id", None)
        ids.update(configured if isinstance(configured, list) else [configured])
        return frozenset(i for i in ids if i is not None)

    def _model_folder(self) -> Path | None:
        if self._is_folder:
            return Path(self.path)
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(self.path, local_files_only=True))
        except Exception:  # not in the hub cache layout: fall back to hashing the weights
            return None

    def _weights_digest(self) -> str:
        import torch

        digest = hashlib.sha256()
        for key, tensor in sorted(self.model.state_dict().items()):
            digest.update(key.encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
        return digest.hexdigest()

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            folder = self._model_folder()
            parts = [
                type(self).__name__,
                folder_digest(folder) if folder else self._weights_digest(),
            ]
            if self.adapter is not None:
                parts.append(folder_digest(Path(self.adapter)))
            # Other weights' precision gives other samples: a cached call must not serve it.
            weights_dtype = str(next(self.model.parameters()).dtype)
            if weights_dtype != "torch.float32":
                parts.append(weights_dtype)
            self._fingerprint = hashlib.sha256("\n".join(parts).encode()).hexdigest()
        return self._fingerprint

    # ------------------------------------------------------------------ prompts

    @property
    def uses_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def render(self, prompt: ChatPrompt) -> str:
        """The prompt as text: the chat template with the assistant turn opened, or for plain
        completion models the system and user text joined."""
        if self.uses_chat_template:
            return self.tokenizer.apply_chat_template(
                prompt.as_messages(), add_generation_prompt=True, tokenize=False
            )
        return f"{prompt.system}\n\n{prompt.user}\n" if prompt.system else f"{prompt.user}\n"

    def _encode_text(self, text: str) -> list[int]:
        # A chat template writes BOS itself; a plain text gets the tokenizer's usual specials.
        return list(
            self.tokenizer(text, add_special_tokens=not self.uses_chat_template)["input_ids"]
        )

    def prompt_ids(self, prompt: ChatPrompt) -> list[int]:
        return self._encode_text(self.render(prompt))

    def option_ids(self, prompt: ChatPrompt, option: str) -> list[int]:
        """The option's tokens as the tokenizer splits them right after the rendered prompt:
        this picks between the option's leading-space and bare forms the way the model sees
        an answer start. Tokenized alone when the prompt's ids are not a prefix of the joint."""
        text = self.render(prompt)
        base = self._encode_text(text)
        joint = self._encode_text(text + option)
        if joint[: len(base)] == base and len(joint) > len(base):
            return joint[len(base) :]
        return list(self.tokenizer(option, add_special_tokens=False)["input_ids"])

    # ------------------------------------------------------------------ generation

    def generate(
        self, prompts: Sequence[ChatPrompt], decoding: Decoding, num_samples: int = 1
    ) -> list[list[Generation]]:
        import torch

        if num_samples < 1:
            raise ValueError("num_samples must be at least 1")
        torch.manual_seed(decoding.seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(decoding.seed)
        encoded = [self.prompt_ids(prompt) for prompt in prompts]
        # Rows of similar length share a batch: less padding to attend over.
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
        rows = [(i, j) for i in order for j in range(num_samples)]
        results: list[list[Generation | None]] = [[None] * num_samples for _ in prompts]
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start : start + self.batch_size]
            seeds = [_row_seed(decoding.seed, j, prompts[i]) for i, j in batch]
            began = time.perf_counter()
            new_tokens = self._generate_rows([encoded[i] for i, _ in batch], decoding, seeds)
            seconds = (time.perf_counter() - began) / len(batch)
            for (i, j), tokens in zip(batch, new_tokens, strict=True):
                results[i][j] = self._generation(tokens, len(encoded[i]), seconds)
        return [[g for g in row if g is not None] for row in results]

    def _generate_rows(
        self, rows: Sequence[list[int]], decoding: Decoding, seeds: Sequence[int]
    ) -> list[list[int]]:
        """Each row's new tokens: decoded by `_decode` from a prefilled cache, or where that
        does not fit this model, by `model.generate`."""
        if self._own_decode:
            prefix = self._prefilled_cache(rows, decoding.max_new_tokens)
            if prefix is not None:
                try:
                    return self._decode(rows, prefix, decoding, seeds)
                except Exception:  # a model or cache this does not fit: generate, for good
                    self._own_decode = False
        ids, mask, _ = _left_pad(rows, self.tokenizer.pad_token_id)
        prefix = self._prefilled_cache(rows, decoding.max_new_tokens)
        output = self._generate_batch(ids, mask, decoding, seeds, prefix)
        return output[:, ids.shape[1] :].tolist()

    def _decode(
        self, rows: Sequence[list[int]], cache: Any, decoding: Decoding, seeds: Sequence[int]
    ) -> list[list[int]]:
        """Token by token from a cache holding the rows' prompts but their last tokens (see
        `_prefilled_cache`); each row's tokens up to and including its EOS.

        Unlike `generate`, which computes every row until the longest is done, a batch drops
        its finished rows (and their keys and values) once they are a share of it: profiles
        differ a lot in length, so most late steps would otherwise compute finished rows.
        Sampling is row by row as in `generate` (`_SeededSampler`), so both give the same
        tokens.
        """
        import torch

        width = max(len(row) for row in rows) - 1
        steps = decoding.max_new_tokens
        mask = torch.zeros((len(rows), width + steps), dtype=torch.long, device=self.device)
        for r, row in enumerate(rows):
            mask[r, width - len(row) + 1 : width] = 1
        tokens = torch.tensor([row[-1:] for row in rows], device=self.device)
        positions = torch.tensor([[len(row) - 1] for row in rows], device=self.device)
        sampler = (
            _SeededSampler(seeds, decoding.temperature, decoding.top_p)
            if decoding.temperature > 0
            else None
        )
        out: list[list[int]] = [[] for _ in rows]
        live = list(range(len(rows)))  # the row each batch position decodes
        finished = [False] * len(live)
        with torch.inference_mode():
            for step in range(steps):
                mask[:, width + step] = 1
                logits = self.model(
                    input_ids=tokens,
                    attention_mask=mask[:, : width + step + 1],
                    position_ids=positions,
                    use_cache=True,
                    logits_to_keep=1,
                    **{self._cache_kwarg: cache},
                ).logits[:, -1]
                chosen = sampler.draw(logits, live) if sampler else logits.argmax(-1)
                for k, token in enumerate(chosen.tolist()):
                    if not finished[k]:
                        out[live[k]].append(token)
                        finished[k] = token in self.eos_ids
                if all(finished):
                    break
                if sum(finished) >= COMPACT_FINISHED_SHARE * len(live):
                    keep = torch.tensor(
                        [k for k, done in enumerate(finished) if not done], device=self.device
                    )
                    _drop_rows(cache, keep)
                    mask, chosen, positions = mask[keep], chosen[keep], positions[keep]
                    live = [live[k] for k in keep.tolist()]
                    finished = [False] * len(live)
                tokens = chosen.unsqueeze(-1)
                positions = positions + 1
        return out

    def _prefilled_cache(self, rows: Sequence[list[int]], max_new_tokens: int) -> Any | None:
        """A static KV cache holding every row's prompt but its last token, left padded, or None
        where this model cannot take one (generate then prefills the padded batch itself).

        Each distinct prompt runs alone, unpadded, through the causal fast path and its keys and
        values are copied into all of its rows: the samples of a prompt share one prefill, and
        no prefill attends over padding. The prompt's last token goes through generate, which
        continues from the cache exactly as from its own prefill.
        """
        if not self._prefix_cache or min(len(row) for row in rows) < 2:
            return None
        import torch
        from transformers import StaticCache

        try:
            width = max(len(row) for row in rows) - 1
            per_prompt: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}
            with torch.inference_mode():
                for row in rows:
                    key = tuple(row[:-1])
                    if key in per_prompt:
                        continue
                    out = self.model(  # logits for every position were a third of a prefill's work
                        input_ids=torch.tensor([key], device=self.device),
                        use_cache=True,
                        logits_to_keep=1,
                    )
                    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
                    layers = [(layer.keys, layer.values) for layer in cache.layers]
                    if any(k.shape[-2] != len(key) for k, _ in layers):  # sliding windows etc.
                        raise ValueError("cache layers do not hold the whole prompt")
                    per_prompt[key] = layers
                static = StaticCache(
                    config=self.model.config, max_cache_len=width + 1 + max_new_tokens
                )
                for layer_idx in range(len(static.layers)):
                    sample_k, sample_v = next(iter(per_prompt.values()))[layer_idx]
                    keys = sample_k.new_zeros(
                        (len(rows), *sample_k.shape[1:2], width, sample_k.shape[-1])
                    )
                    values = sample_v.new_zeros(
                        (len(rows), *sample_v.shape[1:2], width, sample_v.shape[-1])
                    )
                    for r, row in enumerate(rows):
                        k, v = per_prompt[tuple(row[:-1])][layer_idx]
                        keys[r, :, width - k.shape[-2] :] = k[0]
                        values[r, :, width - v.shape[-2] :] = v[0]
                    static.update(keys, values, layer_idx)
            return static
        except Exception:  # any model or transformers version this does not fit: plain generate
            self._prefix_cache = False
            return None

    def _generate_batch(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        decoding: Decoding,
        seeds: Sequence[int],
        prefix: Any | None = None,
    ) -> torch.Tensor:
        """One batch through `model.generate`, greedy over the rows' own samples. With a static
        KV cache (preallocated, so a step does not copy the whole cache as the dynamic one's
        concatenation does: 1.8x faster decoding measured on CPU); a model without one falls
        back to the dynamic cache for good."""
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        tries: tuple[str | None, ...] = ("static", None) if self._static_cache else (None,)
        if prefix is not None:
            tries = ("prefix", *tries)
        for cache in tries:
            processors = LogitsProcessorList()
            if decoding.temperature > 0:  # fresh generators: a failed try must not consume draws
                processors.append(_SeededSampler(seeds, decoding.temperature, decoding.top_p))
            config = GenerationConfig(
                max_new_tokens=decoding.max_new_tokens,
                do_sample=False,  # sampling happens in _SeededSampler, row by row
                num_beams=1,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=sorted(self.eos_ids),
                bos_token_id=self.tokenizer.bos_token_id,
                cache_implementation=None if cache == "prefix" else cache,
            )
            extra = {self._cache_kwarg: prefix} if cache == "prefix" else {}
            try:
                with torch.inference_mode():
                    return self.model.generate(
                        input_ids=ids.to(self.device),
                        attention_mask=mask.to(self.device),
                        generation_config=config,
                        logits_processor=processors,
                        **extra,
                    )
            except Exception as exc:  # any failure of a faster try falls back to the next
                if cache is None:
                    raise ModelError(f"{self.name}: generation failed: {exc}") from exc
                if cache == "prefix":
                    self._prefix_cache = False
                else:
                    self._static_cache = False
        raise AssertionError("unreachable")

    def _generation(self, tokens: list[int], prompt_tokens: int, seconds: float) -> Generation:
        stop = next((k for k, token in enumerate(tokens) if token in self.eos_ids), None)
        kept = tokens if stop is None else tokens[:stop]
        return Generation(
            text=self.tokenizer.decode(kept, skip_special_tokens=True).strip(),
            prompt_tokens=prompt_tokens,
            completion_tokens=len(tokens) if stop is None else stop + 1,  # EOS counts
            seconds=seconds,
            finish_reason="length" if stop is None else "stop",
        )

    # ------------------------------------------------------------------ scoring

    def _forward(self, rows: Sequence[Sequence[int]], keep: int) -> torch.Tensor:
        """Log-softmax over the vocabulary at the last `keep` positions of each left-padded row.
        Attention mask and position ids make a padded row score as it would alone."""
        import torch

        ids, mask, positions = _left_pad(rows, self.tokenizer.pad_token_id)
        with torch.inference_mode():
            logits = self.model(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                position_ids=positions.to(self.device),
                logits_to_keep=keep,
                use_cache=False,
            ).logits
        return logits.float().log_softmax(-1)

    def score_options(self, prompts: Sequence[ChatPrompt], options: Sequence[str]) -> np.ndarray:
        """One forward pass per batch of prompts, reading each option's first token at the
        answer position. When two options share their first token (or one is empty) that cannot
        tell them apart, so the call scores every option's full token sequence instead."""
        if not options:
            raise ValueError("score_options needs at least one option")
        if not prompts:
            return np.zeros((0, len(options)))
        encoded = [self.prompt_ids(prompt) for prompt in prompts]
        # Every prompt ends with the same rendered answer opening, so the first one decides.
        option_tokens = [self.option_ids(prompts[0], option) for option in options]
        firsts = [tokens[0] if tokens else None for tokens in option_tokens]
        if None not in firsts and len(set(firsts)) == len(firsts):
            scores = self._first_token_scores(encoded, firsts)  # type: ignore[arg-type]
        else:
            scores = self._sequence_scores(encoded, option_tokens)
        return scores - np.logaddexp.reduce(scores, axis=1, keepdims=True)

    def _first_token_scores(
        self, encoded: Sequence[list[int]], firsts: Sequence[int]
    ) -> np.ndarray:
        out = np.empty((len(encoded), len(firsts)))
        picked = list(firsts)
        for rows, shared in _prefix_groups(encoded, SHARED_PREFIX_MIN_TOKENS):
            if shared and self._shared_prefix:
                try:
                    out[rows] = self._shared_prefix_scores(
                        [encoded[i] for i in rows], shared, picked
                    )
                    continue
                except Exception:  # a model or cache this does not fit: the plain path, for good
                    self._shared_prefix = False
            for start in range(0, len(rows), self.batch_size):
                chunk = rows[start : start + self.batch_size]
                log_probs = self._forward([encoded[i] for i in chunk], keep=1)[:, -1, :]
                out[chunk] = log_probs[:, picked].cpu().double().numpy()
        return out

    def _shared_prefix_scores(
        self, rows: Sequence[list[int]], shared: int, picked: list[int]
    ) -> np.ndarray:
        """Next-token log-probabilities after rows that all begin with the same `shared` tokens:
        the prefix runs once per batch and its keys and values serve every row, so only the
        rows' own ends (a candidate item, say) are computed row by row. The ends are left
        padded after the prefix, masked, with positions that continue the prefix, so every
        row ends at the last position and only that position's logits are computed."""
        import torch

        prefix = torch.tensor([rows[0][:shared]], device=self.device)
        out = np.empty((len(rows), len(picked)))
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            tails = [row[shared:] for row in chunk]
            width = max(len(t) for t in tails)
            ids = torch.full((len(chunk), width), self.tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), shared + width), dtype=torch.long)
            mask[:, :shared] = 1
            positions = torch.full((len(chunk), width), shared, dtype=torch.long)
            for r, tail in enumerate(tails):
                pad = width - len(tail)
                ids[r, pad:] = torch.tensor(tail)
                mask[r, shared + pad :] = 1
                positions[r, pad:] = torch.arange(shared, shared + len(tail))
            with torch.inference_mode():
                first = self.model(input_ids=prefix, use_cache=True, logits_to_keep=1)
                cache = getattr(first, "cache", None) or getattr(first, "past_key_values", None)
                for layer in cache.layers:  # views, not copies: the next step concatenates anyway
                    layer.keys = layer.keys.expand(len(chunk), *layer.keys.shape[1:])
                    layer.values = layer.values.expand(len(chunk), *layer.values.shape[1:])
                logits = self.model(
                    input_ids=ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    position_ids=positions.to(self.device),
                    use_cache=True,
                    logits_to_keep=1,
                    **{self._cache_kwarg: cache},
                ).logits
                log_probs = logits[:, -1].float().log_softmax(-1)
            out[start : start + len(chunk)] = log_probs[:, picked].cpu().double().numpy()
        return out

    def _sequence_scores(
        self, encoded: Sequence[list[int]], option_tokens: Sequence[list[int]]
    ) -> np.ndarray:
        """Sum of the log-probabilities of each option's tokens after each prompt."""
        if any(not tokens for tokens in option_tokens):
            raise ModelError(f"{self.name}: an option tokenizes to nothing; cannot score it")
        pairs = [(i, k) for i in range(len(encoded)) for k in range(len(option_tokens))]
        out = np.empty((len(encoded), len(option_tokens)))
        longest = max(len(tokens) for tokens in option_tokens)
        for start in range(0, len(pairs), self.batch_size):
            chunk = pairs[start : start + self.batch_size]
            # Right-align each prompt+option; pad the option's tail so all rows end together.
            rows = [encoded[i] + option_tokens[k] for i, k in chunk]
            log_probs = self._forward(rows, keep=longest + 1)
            for r, (i, k) in enumerate(chunk):
                tokens = option_tokens[k]
                n = len(tokens)
                # Row r ends with the option; the logits predicting it sit one position earlier.
                predicting = log_probs[r, -n - 1 : -1, :]
                picked = predicting.gather(-1, _as_index(tokens, predicting.device)).sum()
                out[i, k] = float(picked)
        return out


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for k in range(n):
        if a[k] != b[k]:
            return k
    return n


def _prefix_groups(
    encoded: Sequence[Sequence[int]], min_shared: int
) -> list[tuple[list[int], int]]:
    """Runs of consecutive rows that begin with the same tokens, each with the length they all
    share (each row keeps one token of its own); 0 for a row that shares little with its
    neighbours.

    A row joins the run when that saves work: its tokens in common with the run's first row
    would otherwise be computed again by a run of its own, while joining shortens the shared
    part for every row already in the run. So the candidates of one ranking example (prompts
    that differ only in the item at the end) form a run, the next profile's candidates, which
    share only the recent window with them, start their own, and a target's profiles in the
    sentiment task (which share the recent window) form one run.
    """
    groups: list[tuple[list[int], int]] = []
    start = 0
    while start < len(encoded):
        first = encoded[start]
        end, shared = start + 1, len(first) - 1
        while end < len(encoded):
            common = min(_common_prefix(first, encoded[end]), len(encoded[end]) - 1)
            if common < min_shared or (shared - common) * (end - start) > common:
                break
            shared = min(shared, common)
            end += 1
        if end - start > 1:
            groups.append((list(range(start, end)), shared))
        else:
            groups.append(([start], 0))
        start = end
    return groups


def _drop_rows(cache: Any, keep: torch.Tensor) -> None:
    """Keep only the batch rows `keep` of every layer of a KV cache."""
    for layer in cache.layers:
        layer.keys = layer.keys.index_select(0, keep)
        layer.values = layer.values.index_select(0, keep)


def _as_index(tokens: Sequence[int], device: Any) -> torch.Tensor:
    import torch

    return torch.tensor(list(tokens), dtype=torch.long, device=device).unsqueeze(-1)
