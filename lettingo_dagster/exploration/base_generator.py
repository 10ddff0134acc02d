"""The project's own small profile generator: a byte-level BPE tokenizer trained on
the dataset's prompts and profiles, and a Llama-architecture causal LM of a few million
parameters pretrained on the deterministic writers' profiles of the training users.

Plain functions, no Dagster: the asset only wires them to storage and MLflow.

Pretraining cost on CPU is set by the prompt (about 30 items, some 400 tokens) while the loss
only covers the profile (about 60 tokens). Every history has one prompt and one profile per
writer style, so the prompt is packed once with all its profiles behind it: each profile attends
to the shared prompt and to itself only, and restarts its positions where the prompt ends. The
loss and gradients are exactly those of the separate (prompt, profile) examples, for about a third
of the compute. Logits are computed only where a label is predicted, since the LM head over the
vocabulary would otherwise dominate a model this small.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lettingo_dagster.exploration.history import UserHistory
from lettingo_dagster.exploration.prompts import PromptTemplate, sanitize_field
from lettingo_dagster.exploration.writers import write_profiles
from lettingo_dagster.models.base import ChatPrompt, Decoding
from lettingo_dagster.models.determinism import deterministic_torch
from lettingo_dagster.models.precision import native_bf16
from lettingo_dagster.settings import BaseGeneratorSettings

if TYPE_CHECKING:  # torch and transformers load lazily: importing stays fast
    import torch
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (BOS, EOS, PAD, UNK, *ROLE_TOKENS)
# `<s>`, then `<|role|>\n{content}\n` per message; the generation prompt opens the assistant turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
IGNORE_INDEX = -100
REPORT_FILE = "pretrain_report.json"


# --------------------------------------------------------------------------- data


def window_views(
    history: UserHistory,
    views: int,
    keep: float,
    seed: int,
    genre_names: Sequence[str] = (),
) -> list[UserHistory]:
    """The long window itself, then `views - 1` seeded subsets of it (each item kept with
    probability `keep`, order kept): more distinct prompts, with their own statistics and
    profiles, for a small model to learn reading from, at no cost to the data.

    With `genre_names`, each subset also gets those genres renamed by a seeded permutation of
    them. A small model otherwise learns which genres its training users tend to like instead
    of reading them from the prompt; with the names shuffled, copying is the only way to fit.
    """
    from lettingo_dagster.data.samples import stable_unit_hash

    names = sorted(set(genre_names))
    out = [history]
    for view in range(1, views):
        key = f"{history.user_id}:view {view}"
        kept = tuple(
            item
            for index, item in enumerate(history.items)
            if stable_unit_hash(seed, f"{key}:item {index}") < keep
        )
        if len(kept) < 2:
            continue
        if names:
            shuffled = sorted(names, key=lambda name: stable_unit_hash(seed, f"{key}:genre {name}"))
            renamed = dict(zip(names, shuffled, strict=True))
            kept = tuple(
                replace(item, genres=tuple(renamed.get(g, g) for g in item.genres)) for item in kept
            )
        out.append(UserHistory(history.user_id, history.split, kept))
    return out


def training_examples(
    histories: Sequence[UserHistory],
    template: PromptTemplate,
    styles: Sequence[str] | None = None,
    views: int = 1,
    view_keep: float = 0.75,
    seed: int = 0,
    *,
    permute_genres: bool = False,
    genre_figures: bool = True,
) -> list[tuple[ChatPrompt, str, str]]:
    """(prompt, profile, style) for every writer style (or those in `styles`) of every history,
    and of `views - 1` subsets of each (`window_views`, their genres renamed with
    `permute_genres`); `genre_figures=False` trains on genre_affinity's brief form.

    Prompts are rendered with the generator's special tokens defused, exactly as they are at
    sampling time; profiles are sanitized the same way, so a title seen in the prompt is the
    title the profile repeats, and no profile can contain the end-of-sequence marker.
    """
    genre_names = (
        sorted({g for h in histories for item in h.items for g in item.genres})
        if permute_genres
        else ()
    )
    chosen = tuple(styles) if styles else None
    examples: list[tuple[ChatPrompt, str, str]] = []
    for history in histories:
        for view in window_views(history, views, view_keep, seed, genre_names):
            prompt = template.render(view, SPECIAL_TOKENS)
            profiles = write_profiles(view, chosen, genre_figures=genre_figures)
            for style, profile in profiles.items():
                examples.append((prompt, sanitize_field(profile, SPECIAL_TOKENS), style))
    return examples


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE (no unknown bytes, ever) with the chat special tokens and template.

    Every line is pre-tokenized as if it followed a space, so a title at the start of a prompt
    line gets the same tokens as in the middle of a profile ("; Fargo (1996)"): copying a title
    is then copying tokens. The price: decoding puts a space at the start of each line, which a
    one-line profile loses to strip().
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex("\n"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=True),
        ]
    )
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        extra_special_tokens=list(ROLE_TOKENS),
        # No automatic BOS: the chat template writes it, so ids never get two.
        add_bos_token=False,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        model_max_length=1_000_000,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _tokenizer_texts(examples: Sequence[tuple[ChatPrompt, str, str]]) -> Iterable[str]:
    seen: set[ChatPrompt] = set()
    for prompt, profile, _style in examples:
        if prompt not in seen:
            seen.add(prompt)
            if prompt.system:
                yield prompt.system
            yield prompt.user
        yield profile


def build_model(
    tokenizer: PreTrainedTokenizerFast, settings: BaseGeneratorSettings
) -> LlamaForCausalLM:
    """A freshly initialized Llama (seeded by `settings.seed`): a Llama config, not Qwen2, so
    AutoTokenizer reloads the saved folder with the same ids."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden_size,
        intermediate_size=settings.intermediate_size,
        num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.num_heads,
        num_key_value_heads=settings.num_heads,
        max_position_embeddings=settings.max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation="sdpa",
    )
    torch.manual_seed(settings.seed)
    model = LlamaForCausalLM(config)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


# --------------------------------------------------------------------------- packing


@dataclass(frozen=True)
class _Group:
    """One prompt and the completions (profile ids + EOS) trained behind it."""

    prompt: tuple[int, ...]
    completions: tuple[tuple[int, ...], ...]

    @property
    def length(self) -> int:
        # The last completion token (EOS) is only ever a label, never an input.
        return len(self.prompt) + sum(len(c) - 1 for c in self.completions)


@dataclass
class _Batch:
    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, 1, T, T) bool, True = may attend
    position_ids: torch.Tensor  # (B, T)
    sources: torch.Tensor  # (N, 2): (row, position) whose hidden state predicts each label
    labels: torch.Tensor  # (N,)
    tokens: int  # non-padding input tokens
    examples: int

    def to(self, device: torch.device) -> _Batch:
        return _Batch(
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            position_ids=self.position_ids.to(device),
            sources=self.sources.to(device),
            labels=self.labels.to(device),
            tokens=self.tokens,
            examples=self.examples,
        )


def encode_example(
    tokenizer: PreTrainedTokenizerFast, prompt: ChatPrompt, profile: str
) -> tuple[list[int], list[int]]:
    """Prompt ids (chat template with the generation prompt) and completion ids (profile + EOS),
    tokenized apart because generation continues right after the prompt's ids."""
    text = tokenizer.apply_chat_template(
        prompt.as_messages(), add_generation_prompt=True, tokenize=False
    )
    prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    completion = tokenizer(profile, add_special_tokens=False)["input_ids"] + [
        tokenizer.eos_token_id
    ]
    return list(prompt_ids), list(completion)


def _collate(groups: Sequence[_Group], pad_id: int, prompt_loss: bool = False) -> _Batch:
    """Right-padded packed rows: segment 0 is the prompt (causal), segment k its k-th completion,
    which sees the prompt and itself (causal) with positions continuing from the prompt.
    Labels are the completions' tokens, and with `prompt_loss` the prompt's own tokens too."""
    import torch

    width = max(group.length for group in groups)
    ids = torch.full((len(groups), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(groups), width), dtype=torch.long)
    segments = torch.full((len(groups), width), -1, dtype=torch.long)
    sources: list[tuple[int, int]] = []
    labels: list[int] = []
    for row, group in enumerate(groups):
        p = len(group.prompt)
        ids[row, :p] = torch.tensor(group.prompt)
        positions[row, :p] = torch.arange(p)
        segments[row, :p] = 0
        if prompt_loss:  # prompt token i+1 from position i: plain language modelling
            sources.extend((row, i) for i in range(p - 1))
            labels.extend(group.prompt[1:])
        offset = p
        for k, completion in enumerate(group.completions, start=1):
            inputs = completion[:-1]
            n = len(inputs)
            ids[row, offset : offset + n] = torch.tensor(inputs, dtype=torch.long)
            positions[row, offset : offset + n] = torch.arange(p, p + n)
            segments[row, offset : offset + n] = k
            # completion[0] is predicted from the prompt's last token, completion[j] from input j-1
            sources.extend([(row, p - 1), *((row, offset + j) for j in range(n))])
            labels.extend(completion)
            offset += n
    index = torch.arange(width)
    causal = index[None, :] <= index[:, None]  # (T, T): key j at or before query i
    same = segments[:, :, None] == segments[:, None, :]  # (B, T, T)
    sees_prompt = (segments[:, None, :] == 0) & (segments[:, :, None] >= 0)
    # Padding queries see only padding (never a fully masked row, which gives NaN in SDPA).
    mask = causal[None] & (same | sees_prompt)
    return _Batch(
        input_ids=ids,
        attention_mask=mask[:, None],
        position_ids=positions,
        sources=torch.tensor(sources, dtype=torch.long),
        labels=torch.tensor(labels, dtype=torch.long),
        tokens=int((segments >= 0).sum()),
        examples=sum(len(g.completions) for g in groups),
    )


def _group_examples(
    encoded: Sequence[tuple[list[int], list[int]]], max_positions: int
) -> tuple[list[_Group], int]:
    """Groups of examples sharing a prompt; examples longer than max_positions are dropped."""
    by_prompt: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
    dropped = 0
    for prompt_ids, completion in encoded:
        if len(prompt_ids) + len(completion) > max_positions:
            dropped += 1
            continue
        by_prompt.setdefault(tuple(prompt_ids), []).append(tuple(completion))
    return [_Group(prompt, tuple(c)) for prompt, c in by_prompt.items()], dropped


def _make_batches(
    groups: Sequence[_Group], batch_size: int, rng: random.Random
) -> list[list[_Group]]:
    """One epoch of batches of about `batch_size` examples; groups of similar length share a
    batch (sorted within shuffled pools of 50 batches) and batch order is shuffled."""
    order = list(groups)
    rng.shuffle(order)
    per_group = max(1.0, sum(len(g.completions) for g in groups) / max(1, len(groups)))
    pool = max(1, int(50 * batch_size / per_group))
    batches: list[list[_Group]] = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda g: g.length)
        current: list[_Group] = []
        count = 0
        for group in chunk:
            current.append(group)
            count += len(group.completions)
            if count >= batch_size:
                batches.append(current)
                current, count = [], 0
        if current:
            batches.append(current)
    rng.shuffle(batches)
    return batches


def packed_loss(model: LlamaForCausalLM, batch: _Batch) -> torch.Tensor:
    """Mean cross-entropy over the batch's label tokens (profile tokens and EOS)."""
    import torch.nn.functional as F

    hidden = model.model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
    ).last_hidden_state
    picked = hidden[batch.sources[:, 0], batch.sources[:, 1]]
    logits = model.lm_head(picked).float()
    return F.cross_entropy(logits, batch.labels)


# --------------------------------------------------------------------------- pretraining


def copy_curriculum(
    tokenizer: PreTrainedTokenizerFast,
    examples: Sequence[tuple[ChatPrompt, str, str]],
    max_positions: int,
) -> list[_Group]:
    """Each distinct prompt with its own first line as the completion: a task that is nothing
    but copying from the context, the skill a profile of the prompt's lists needs."""
    prompts = list(dict.fromkeys(prompt for prompt, _profile, _style in examples))
    encoded = [
        encode_example(tokenizer, prompt, prompt.user.split("\n", 1)[0]) for prompt in prompts
    ]
    return _group_examples(encoded, max_positions)[0]


class _Progress:
    """The smoothed loss and throughput of the steps so far, logged every `every` steps."""

    def __init__(
        self, log: Callable[[str], None], every: int, curve: list[tuple[int, float]]
    ) -> None:
        self.log, self.every, self.curve = log, every, curve
        self.step = 0  # optimizer steps over every phase
        self.tokens = 0
        self._window_tokens = 0
        self._window_start = time.perf_counter()

    def record(self, phase: str, phase_step: int, total: int, smoothed: float, lr: float,
               tokens: int, epoch: float | None) -> None:  # fmt: skip
        self.step += 1
        self.tokens += tokens
        self._window_tokens += tokens
        if phase_step % self.every == 0 or phase_step == total or phase_step == 1:
            now = time.perf_counter()
            self.curve.append((self.step, round(smoothed, 4)))
            where = f" epoch {epoch:.2f}" if epoch is not None else ""
            self.log(
                f"{phase} step {phase_step}/{total}{where} loss {smoothed:.3f} lr {lr:.2e} "
                f"{self._window_tokens / max(now - self._window_start, 1e-9):,.0f} tokens/s"
            )
            self._window_start, self._window_tokens = now, 0


def _train_phase(
    model: LlamaForCausalLM,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    groups: Sequence[_Group],
    settings: BaseGeneratorSettings,
    rng: random.Random,
    device: torch.device,
    bf16: bool,
    *,
    steps: int,
    prompt_loss: bool,
    progress: _Progress,
    phase: str,
    per_epoch: int | None = None,
    stop_below: float | None = None,
) -> tuple[int, float]:
    """Up to `steps` optimizer steps over shuffled epochs of `groups`; stops early once the
    smoothed loss is below `stop_below`. Returns the steps taken and the final smoothed loss."""
    import contextlib

    import torch

    step, smoothed = 0, math.inf
    while step < steps:
        for groups_in_batch in _make_batches(groups, settings.batch_size, rng):
            if step >= steps:
                break
            batch = _collate(groups_in_batch, model.config.pad_token_id, prompt_loss).to(device)
            autocast = (
                torch.autocast(device.type, dtype=torch.bfloat16)
                if bf16
                else contextlib.nullcontext()
            )
            with autocast:
                loss = packed_loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            value = float(loss.detach())
            smoothed = value if step == 1 else 0.9 * smoothed + 0.1 * value
            epoch = step / per_epoch if per_epoch else None
            progress.record(
                phase, step, steps, smoothed, scheduler.get_last_lr()[0], batch.tokens, epoch
            )
            # Not before 20 steps: the smoothed loss needs a few batches to mean anything.
            if stop_below is not None and step >= 20 and smoothed < stop_below:
                return step, smoothed
    return step, smoothed


@dataclass
class PretrainReport:
    parameters: int
    examples: int  # examples trained on (after dropping the too long ones)
    train_tokens: int  # prompt + profile + EOS tokens of those examples, one epoch
    epochs: float
    seconds: float
    loss_curve: list[tuple[int, float]]  # (step, smoothed loss)
    final_loss: float  # smoothed training loss at the last step
    dropped_examples: int = 0  # longer than settings.max_positions
    target_tokens: int = 0  # profile + EOS tokens (the supervised ones), one epoch
    steps: int = 0
    tokens_per_second: float = 0.0  # packed input tokens processed per second
    vocab_size: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warmup, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def pretrain(
    examples: Sequence[tuple[ChatPrompt, str, str]],
    settings: BaseGeneratorSettings,
    out_dir: Path,
    *,
    torch_threads: int = 2,
    log: Callable[[str], None] = print,
    progress_every: int = 20,
    device: str = "cpu",
    bf16: bool | None = False,
) -> PretrainReport:
    """Train the tokenizer and the model on (prompt, profile) examples; save both to out_dir.

    `device`: "cpu", "cuda" or "auto". `bf16`: autocast matmuls to bfloat16 (weights, optimizer
    and loss stay float32); None uses it where the hardware has native bfloat16. Off by default:
    on a 2-core AVX512-BF16 CPU it was 1.15-1.5x faster but ended at a slightly higher loss, and
    float32 gives the same model on every machine.
    """
    import contextlib

    import torch

    started = time.perf_counter()
    target = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    )
    use_bf16 = native_bf16(target) if bf16 is None else bf16
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(torch_threads)  # oversubscribed cores are several times slower
    restore = contextlib.ExitStack()
    restore.enter_context(deterministic_torch())  # the same weights on every rerun
    try:
        tokenizer = train_tokenizer(_tokenizer_texts(examples), settings.vocab_size)
        encoded = [encode_example(tokenizer, prompt, profile) for prompt, profile, _ in examples]
        groups, dropped = _group_examples(encoded, settings.max_positions)
        if not groups:
            raise ValueError(
                f"no training example fits max_positions={settings.max_positions} "
                f"({dropped} dropped)"
            )
        kept = sum(len(g.completions) for g in groups)
        train_tokens = sum(
            len(p) + len(c) for p, c in encoded if len(p) + len(c) <= settings.max_positions
        )
        target_tokens = sum(sum(len(c) for c in g.completions) for g in groups)
        if dropped:
            log(
                f"dropped {dropped} of {len(encoded)} examples longer than {settings.max_positions} tokens"
            )

        model = build_model(tokenizer, settings).to(target)
        model.train()
        parameters = sum(p.numel() for p in model.parameters())
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
        no_decay = [
            p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)
        ]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
            lr=settings.learning_rate,
            betas=(0.9, 0.98),
        )
        rng = random.Random(settings.seed)
        per_epoch = len(_make_batches(groups, settings.batch_size, random.Random(settings.seed)))
        total_steps = max(1, math.ceil(settings.epochs * per_epoch))
        log(
            f"pretraining {parameters:,} parameters on {kept} examples ({len(groups)} prompts, "
            f"{train_tokens:,} tokens an epoch), {total_steps} steps of ~{settings.batch_size} examples"
        )
        curve: list[tuple[int, float]] = []
        progress = _Progress(log, progress_every, curve)
        loop_start = time.perf_counter()
        warmup_report: dict[str, Any] = {}
        if settings.copy_warmup_steps:
            echoes = copy_curriculum(tokenizer, examples, settings.max_positions)
            # Linear ramp, then the peak rate until copying is learned.
            ramp = max(1, min(50, settings.copy_warmup_steps // 20))
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda s: min(1.0, (s + 1) / ramp)
            )
            log(
                f"copying curriculum: up to {settings.copy_warmup_steps} steps on {len(echoes)} "
                f"prompts' first lines, until the loss is below {settings.copy_warmup_loss}"
            )
            done, loss = _train_phase(
                model, optimizer, scheduler, echoes, settings, rng, target, use_bf16,
                steps=settings.copy_warmup_steps, prompt_loss=False, progress=progress,
                phase="copying", stop_below=settings.copy_warmup_loss,
            )  # fmt: skip
            warmup_report = {"copy_warmup_steps": done, "copy_warmup_final_loss": round(loss, 4)}
            log(f"copying curriculum ended after {done} steps at loss {loss:.3f}")
        warmup = max(1, min(50, total_steps // 20))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: _lr_factor(s, total_steps, warmup)
        )
        step, smoothed = _train_phase(
            model, optimizer, scheduler, groups, settings, rng, target, use_bf16,
            steps=total_steps, prompt_loss=settings.prompt_loss, progress=progress,
            phase="profiles", per_epoch=per_epoch,
        )  # fmt: skip
        processed = progress.tokens
        loop_seconds = time.perf_counter() - loop_start

        model.eval().to("cpu")
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        report = PretrainReport(
            parameters=parameters,
            examples=kept,
            train_tokens=train_tokens,
            epochs=step / per_epoch,
            seconds=round(time.perf_counter() - started, 2),
            loss_curve=curve,
            final_loss=round(float(smoothed), 4),
            dropped_examples=dropped,
            target_tokens=target_tokens,
            steps=progress.step,
            tokens_per_second=round(processed / max(loop_seconds, 1e-9), 1),
            vocab_size=len(tokenizer),
            extra={
                "device": target.type,
                "bf16": use_bf16,
                "torch_threads": torch_threads,
                **warmup_report,
            },
        )
        (out_dir / REPORT_FILE).write_text(json.dumps(report.as_dict(), indent=2), encoding="utf-8")
        log(
            f"pretrained in {report.seconds:.0f}s, final loss {report.final_loss:.3f}; saved to {out_dir}"
        )
        return report
    finally:
        torch.set_num_threads(previous_threads)
        restore.close()


def sample_examples(
    model_dir: str | Path,
    histories: Sequence[UserHistory],
    template: PromptTemplate,
    n: int,
    decoding: Decoding,
) -> list[tuple[str, str]]:
    """(prompt user text, sampled profile) for the first n histories, from the saved folder."""
    from lettingo_dagster.models.local import LocalCausalLM

    model = LocalCausalLM(model_dir)
    chosen = list(histories[:n])
    prompts = [template.render(history, model.tokenizer.all_special_tokens) for history in chosen]
    generations = model.generate(prompts, decoding, num_samples=1)
    return [
        (prompt.user, samples[0].text) for prompt, samples in zip(prompts, generations, strict=True)
    ]
