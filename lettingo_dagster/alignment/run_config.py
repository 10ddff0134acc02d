"""Per-run options of the `dpo_checkpoint` asset (the launchpad shows them)."""

import dagster as dg
from pydantic import Field

from lettingo_dagster.settings import DpoSettings


class DpoRunConfig(dg.Config):
    """Per-run overrides of the preset's `dpo` section (empty fields keep the preset's value)."""

    beta: float | None = Field(None, description="DPO beta (KL anchor strength).")
    loss_type: str | None = Field(None, description="TRL loss type, e.g. sigmoid, ipo, hinge.")
    sft_weight: float | None = Field(
        None, description="Weight of the NLL term on chosen profiles (0: plain DPO)."
    )
    learning_rate: float | None = Field(None, description="Peak learning rate.")
    epochs: float | None = Field(None, description="Epochs over the training pairs.")
    batch_size: int | None = Field(None, description="Pairs per step and process.")
    max_length: int | None = Field(None, description="Longest prompt plus profile in tokens.")
    lora: bool | None = Field(None, description="LoRA adapters (true) or full fine-tuning (false).")
    lora_rank: int | None = Field(None, description="LoRA rank r.")
    lora_alpha: int | None = Field(None, description="LoRA alpha.")
    lora_target_modules: list[str] | None = Field(None, description="Modules that get adapters.")
    precompute_ref_log_probs: bool | None = Field(
        None, description="Score pairs with the reference once before training."
    )
    max_train_pairs: int | None = Field(None, description="Train on at most this many pairs.")
    processes: int | None = Field(None, description="Training processes under torchrun.")
    seed: int | None = Field(None, description="Seed of data order and initialization.")
    policy_path: str | None = Field(
        None, description="Train this model folder instead of the preset's policy explorer."
    )

    def apply(self, settings: DpoSettings) -> DpoSettings:
        update = {
            key: value
            for key, value in self.model_dump().items()
            if value is not None and key in DpoSettings.model_fields
        }
        lora = {
            field: value
            for field, value in (
                ("enabled", self.lora), ("rank", self.lora_rank), ("alpha", self.lora_alpha),
                ("target_modules", self.lora_target_modules),
            )
            if value is not None
        }  # fmt: skip
        raw = settings.model_dump()
        raw.update(update)
        raw["lora"].update(lora)
        return DpoSettings.model_validate(raw)
