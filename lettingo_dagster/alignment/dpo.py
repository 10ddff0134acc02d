"""Stage 3: align the profile generator with DPO (TRL's DPOTrainer) on the preference pairs.

Plain functions, no Dagster: the trainer process (`lettingo_dagster.alignment.train`, launched
under torchrun through Dagster Pipes) calls `train_dpo`, and tests call it directly.

A training job is described by a `DpoJob` written as JSON next to its inputs (pairs as Parquet),
so the same job runs in-process, as N local processes or on a cluster node. The output folder is
versioned by the caller; inside it:

- `checkpoints/checkpoint-<step>/`: TRL/transformers checkpoints; a restarted job resumes from
  the newest one;
- `model/`: the trained generator (LoRA adapters merged), with its tokenizer, written under a
  temporary name and renamed when complete;
- `adapter/`: the LoRA adapter alone, when LoRA is on;
- `training_report.json`: the figures of the run (per-step metrics, held-out preference accuracy
  before and after, throughput).

The reference model is the policy before training. With `precompute_ref_log_probs` every pair is
scored by it once before the first step and no reference model stays in memory.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from lettingo_dagster.folders import write_folder_atomically
from lettingo_dagster.models.determinism import deterministic_torch

if TYPE_CHECKING:  # torch, transformers and trl load lazily: importing stays fast
    from transformers import PreTrainedTokenizerBase, TrainerCallback

JOB_FILE = "job.json"
REPORT_FILE = "training_report.json"
# The TRL metrics followed per step (names as TRL logs them).
TRACKED_METRICS = (
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
    "learning_rate",
    "grad_norm",
)


class NonFiniteLossError(RuntimeError):
    """DPO produced a NaN or infinite loss: the run stops and nothing is saved as a model."""


@dataclass(frozen=True)
class DpoJob:
    """Everything one DPO training needs; serializable, so a separate process can run it."""

    policy_path: str  # model folder with tokenizer: the policy and the reference
    train_pairs: str  # Parquet from write_pair_file: prompt, chosen, rejected
    heldout_pairs: str  # the same for calibration users' pairs (may be empty)
    output_dir: str
    settings: dict[str, Any]  # DpoSettings.model_dump()
    torch_threads: int = 2
    device: str = "auto"  # ComputeSettings.device: auto, cpu or cuda
    mlflow_tracking_uri: str | None = None
    mlflow_run_id: str | None = None
    bf16: bool = False  # bfloat16 mixed precision (CUDA only; weights stay float32)

    def write(self, path: Path) -> Path:
        path.write_text(json.dumps(asdict(self), indent=1))
        return path

    @classmethod
    def read(cls, path: Path | str) -> DpoJob:
        return cls(**json.loads(Path(path).read_text()))


@dataclass
class TrainingReport:
    model_dir: str
    adapter_dir: str | None
    device: str
    world_size: int
    train_pairs: int
    heldout_pairs: int
    global_step: int
    epochs: float
    seconds: float
    pairs_per_second: float
    trained_parameters: int
    total_parameters: int
    resumed_from_step: int | None
    final_loss: float
    heldout_before: dict[str, float]
    heldout_after: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def margin_grew(self) -> bool:
        """Held-out margin after training above the margin before (0 with precomputed refs)."""
        return self.heldout_after.get("rewards/margins", 0.0) > self.heldout_before.get(
            "rewards/margins", 0.0
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "margin_grew": self.margin_grew}


def read_report(output_dir: Path | str) -> TrainingReport | None:
    path = Path(output_dir) / REPORT_FILE
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    raw.pop("margin_grew", None)
    return TrainingReport(**raw)


# --------------------------------------------------------------------------- data


def render_prompt(tokenizer: PreTrainedTokenizerBase, system: str | None, user: str) -> str:
    """The prompt exactly as generation renders it: the chat template with the assistant turn
    open (see LocalCausalLM.render), so DPO trains on the context the generator samples in."""
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}
    ]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return f"{system}\n\n{user}\n" if system else f"{user}\n"


def pair_records(pairs: pd.DataFrame, tokenizer: PreTrainedTokenizerBase) -> pd.DataFrame:
    """TRL's standard (non-conversational) preference format: prompt, chosen, rejected. TRL
    appends EOS to both completions, as pretraining did."""
    missing = {"prompt_user", "chosen", "rejected"} - set(pairs.columns)
    if missing:
        raise ValueError(f"pairs lack column(s) {sorted(missing)}")
    system = pairs["prompt_system"] if "prompt_system" in pairs else [None] * len(pairs)
    return pd.DataFrame(
        {
            "prompt": [render_prompt(tokenizer, s, u) for s, u in zip(system, pairs["prompt_user"], strict=True)],
            "chosen": [c.strip() for c in pairs["chosen"]],
            "rejected": [r.strip() for r in pairs["rejected"]],
        }
    )  # fmt: skip


def write_pair_file(pairs: pd.DataFrame, policy_path: str | Path, path: Path) -> Path:
    """Pairs rendered with the policy's own chat template, as the Parquet file a job reads.

    Rendering happens once, here: every training process then reads the same file, and the
    datasets cache (TRL's reference log-probs among it) lives beside it where all ranks see it.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(policy_path), local_files_only=True)
    pair_records(pairs, tokenizer).to_parquet(path, index=False)
    return path


def last_checkpoint(checkpoints: Path) -> Path | None:
    """The newest complete `checkpoint-<step>` folder (one with trainer_state.json)."""
    if not checkpoints.is_dir():
        return None
    done = [
        p
        for p in checkpoints.glob("checkpoint-*")
        if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()
    ]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


# --------------------------------------------------------------------------- callbacks


def _callbacks(
    on_metrics: Callable[[int, dict[str, float]], None] | None,
    history: list[dict[str, float]],
) -> list[TrainerCallback]:
    from transformers import TrainerCallback

    class FiniteLossGuard(TrainerCallback):
        """Stops the run at the first NaN or infinite loss, naming the step."""

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
            for key in ("loss", "eval_loss"):
                value = (logs or {}).get(key)
                if value is not None and not math.isfinite(value):
                    raise NonFiniteLossError(
                        f"DPO {key} is {value} at step {state.global_step}: the policy or the "
                        "pairs produce non-finite log-probabilities (check the model's weights, "
                        "the learning rate and beta); nothing was saved or registered"
                    )

    class MetricHistory(TrainerCallback):
        """Keeps the TRL metrics of every logging step and hands them on (rank 0 only)."""

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
            if not state.is_world_process_zero or not logs:
                return
            picked = {
                k: float(v)
                for k, v in logs.items()
                if isinstance(v, int | float) and not k.startswith("eval_")
                and k.split("train_")[-1] in TRACKED_METRICS
            }  # fmt: skip
            if "loss" not in picked:
                return  # eval and end-of-training summaries are reported separately
            history.append({"step": state.global_step, **picked})
            if on_metrics is not None:
                on_metrics(state.global_step, picked)

    return [FiniteLossGuard(), MetricHistory()]


# --------------------------------------------------------------------------- training


def _device(setting: str) -> str:
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("compute.device is cuda but no CUDA device is visible")
    return setting


def _heldout_metrics(metrics: dict[str, float]) -> dict[str, float]:
    return {k.removeprefix("eval_"): float(v) for k, v in metrics.items() if k.startswith("eval_")}


def dpo_losses(loss_type: str, sft_weight: float) -> dict[str, Any]:
    """TRL's loss arguments: the preference loss alone, or with the chosen profiles' NLL added
    at `sft_weight` (TRL combines a list of losses with their weights)."""
    if sft_weight <= 0:
        return {"loss_type": [loss_type]}
    return {"loss_type": [loss_type, "sft"], "loss_weights": [1.0, float(sft_weight)]}


def train_dpo(
    job: DpoJob,
    *,
    callbacks: Sequence[TrainerCallback] = (),
    on_metrics: Callable[[int, dict[str, float]], None] | None = None,
    log: Callable[[str], None] = print,
) -> TrainingReport:
    """Train, resuming from the newest checkpoint in the job's folder; save and report.

    Runs the same in one process and under torchrun (transformers reads RANK / WORLD_SIZE and
    sets up gloo on CPU or NCCL on GPU); only rank 0 writes the model and the report. Kernels
    are deterministic, so a rerun of the same job gives the same model.
    """
    with deterministic_torch():
        return _train(job, callbacks=callbacks, on_metrics=on_metrics, log=log)


def _train(
    job: DpoJob,
    *,
    callbacks: Sequence[TrainerCallback],
    on_metrics: Callable[[int, dict[str, float]], None] | None,
    log: Callable[[str], None],
) -> TrainingReport:
    import pyarrow.parquet as pq
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
    from trl import DPOConfig, DPOTrainer

    settings = job.settings
    torch.set_num_threads(max(1, job.torch_threads))
    out = Path(job.output_dir)
    checkpoints = out / "checkpoints"
    device = _device(job.device)
    if job.bf16 and device != "cuda":
        raise ValueError(f"bf16 mixed precision needs a CUDA device; this job runs on {device}")
    tokenizer = AutoTokenizer.from_pretrained(job.policy_path, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # File-backed datasets: their caches sit in the job folder, shared by every rank.
    cache_dir = str(out / "datasets_cache")
    train = Dataset.from_parquet(job.train_pairs, cache_dir=cache_dir)
    if len(train) == 0:
        raise ValueError(f"{job.train_pairs}: no training pairs")
    heldout = None
    if pq.ParquetFile(job.heldout_pairs).metadata.num_rows:  # datasets cannot read empty files
        heldout = Dataset.from_parquet(job.heldout_pairs, cache_dir=cache_dir)

    model = AutoModelForCausalLM.from_pretrained(
        job.policy_path, local_files_only=True, dtype=torch.float32
    )
    total_parameters = sum(p.numel() for p in model.parameters())
    peft_config = None
    lora = settings["lora"]
    if lora["enabled"]:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=lora["rank"],
            lora_alpha=lora["alpha"],
            lora_dropout=lora["dropout"],
            target_modules=list(lora["target_modules"]),
            task_type="CAUSAL_LM",
        )
    config = DPOConfig(
        output_dir=str(checkpoints),
        beta=settings["beta"],
        **dpo_losses(settings["loss_type"], settings.get("sft_weight", 0.0)),
        learning_rate=settings["learning_rate"],
        num_train_epochs=settings["epochs"],
        per_device_train_batch_size=settings["batch_size"],
        per_device_eval_batch_size=max(settings["batch_size"], 32),
        gradient_accumulation_steps=settings["gradient_accumulation_steps"],
        max_length=settings["max_length"],
        precompute_ref_log_probs=settings["precompute_ref_log_probs"],
        seed=settings["seed"],
        data_seed=settings["seed"],
        logging_steps=settings["logging_steps"],
        logging_first_step=True,
        save_strategy="steps",
        save_steps=settings["save_steps"],
        save_total_limit=2,
        eval_strategy="no",
        report_to="none",  # metrics go to MLflow through on_metrics, from rank 0 only
        use_cpu=device == "cpu",
        bf16=job.bf16,
        # trl turns this on by default; it only slows a model this small.
        gradient_checkpointing=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        ddp_find_unused_parameters=False,
        lr_scheduler_type="cosine",
        warmup_steps=0.1,
        ddp_backend=("nccl" if device == "cuda" else "gloo")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1
        else None,
    )
    history: list[dict[str, float]] = []
    trainer = DPOTrainer(
        model=model,
        args=config,
        train_dataset=train,
        eval_dataset=heldout,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[*_callbacks(on_metrics, history), *callbacks],
    )
    # Progress goes through on_metrics (Pipes, MLflow); the printer would repeat it on stdout.
    trainer.remove_callback(PrinterCallback)
    trained_parameters = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    is_main = trainer.is_world_process_zero()
    resume = last_checkpoint(checkpoints)
    resumed_from = int(resume.name.split("-")[-1]) if resume else None
    if resume is not None:
        log(f"resuming from {resume.name}")
        state = json.loads((resume / "trainer_state.json").read_text())
        history.extend(
            {"step": e["step"], **{k: v for k, v in e.items() if k in TRACKED_METRICS}}
            for e in state.get("log_history", [])
            if "loss" in e
        )
    # Before training the policy is the reference, so every implicit reward is exactly 0 (no
    # dropout): margins and accuracy start at 0 without spending an evaluation pass on it.
    heldout_before = {"rewards/margins": 0.0, "rewards/accuracies": 0.0, "loss": math.log(2)}
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - started
    if not math.isfinite(result.training_loss):
        raise NonFiniteLossError(
            f"DPO training loss is {result.training_loss}: nothing was saved or registered"
        )
    heldout_after = _heldout_metrics(trainer.evaluate()) if heldout is not None else {}
    for name, value in heldout_after.items():
        if not math.isfinite(value):
            raise NonFiniteLossError(f"held-out {name} is {value}: nothing was saved or registered")
    steps_run = result.global_step - (resumed_from or 0)
    pairs_seen = steps_run * settings["batch_size"] * settings["gradient_accumulation_steps"]
    world_size = trainer.args.world_size
    report = TrainingReport(
        model_dir=str(out / "model"),
        adapter_dir=str(out / "adapter") if peft_config is not None else None,
        device=device,
        world_size=world_size,
        train_pairs=len(train),
        heldout_pairs=len(heldout) if heldout is not None else 0,
        global_step=result.global_step,
        epochs=float(settings["epochs"]),
        seconds=seconds,
        pairs_per_second=pairs_seen * world_size / seconds if seconds > 0 else 0.0,
        trained_parameters=trained_parameters,
        total_parameters=total_parameters,
        resumed_from_step=resumed_from,
        final_loss=float(history[-1]["loss"]) if history else float(result.training_loss),
        heldout_before=heldout_before,
        heldout_after=heldout_after,
        history=history,
    )
    if is_main:
        _save(trainer, tokenizer, out, peft_config is not None)
        (out / REPORT_FILE).write_text(json.dumps(report.as_dict(), indent=1))
        log(
            f"DPO done: {result.global_step} steps, loss {report.final_loss:.4f}, held-out "
            f"accuracy {heldout_after.get('rewards/accuracies', float('nan')):.3f}"
        )
    trainer.accelerator.wait_for_everyone()
    return report


def _save(trainer: Any, tokenizer: Any, out: Path, lora: bool) -> None:
    """Write adapter/ (with LoRA) and model/, each complete or not at all."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if lora:
        _save_folder(model, tokenizer, out / "adapter")
        model = model.merge_and_unload()
    _save_folder(model, tokenizer, out / "model")


def _save_folder(model: Any, tokenizer: Any, folder: Path) -> None:
    """save_pretrained whole or not at all: never half a model."""
    with write_folder_atomically(folder) as scratch:
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
