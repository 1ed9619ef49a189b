"""Config of the whole pipeline (``winnow run``): data, arms, seeds and each stage's section."""

from __future__ import annotations

import dataclasses
from typing import Any

from winnow.config.base import C, check
from winnow.config.refine import RefineConfig
from winnow.config.stages import EvalConfig, TrainConfig, WeighConfig
from winnow.config_io import from_dict

ARMS = ("direct", "bds", "bds_refine", "oracle", "random")
"""Fine-tuning arms a run can compare (``oracle`` needs the pool's hidden labels)."""


@dataclasses.dataclass
class RunConfig:
    """The whole pipeline (``winnow run``): data, model, arms and seeds, and each stage's options.

    The stage sections (``weigh``, ``refine``, ``train``, ``eval``) hold that stage's options;
    ``model``, ``max_length`` and ``model_options`` apply to every stage unless a section sets them.
    """

    task: str | None = "safety"
    """Built-in task (``safety``, ``quality``); ``None`` when ``pool``/``val``/``test`` files are given."""
    pool: str | None = None
    """Pool file (any format ``winnow validate`` reads) when not using a built-in task."""
    val: str | None = None
    """Trusted validation file."""
    test: str | None = None
    """Test file (records with ``"harmful": true`` count as harmful prompts)."""
    labels: str | None = None
    """Optional ``{"id", "label": "good"|"bad"}`` JSONL for the pool: enables the oracle arm and selection quality."""
    task_seed: int = 0
    """Seed of the built-in task's split."""
    pool_size: int | None = None
    """Built-in task pool size (``None``: the task's default)."""
    val_size: int | None = None
    """Built-in task validation size."""
    test_size: int | None = None
    """Built-in task test size."""
    model: str = "tiny"
    """Model of every stage."""
    max_length: int = 128
    """Longest tokenised example, every stage."""
    model_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Other model options (``lora_r``, ``lora_targets`` …) for every stage."""
    keep_top: float = 0.8
    """Share of the pool BDS keeps (also the random arm's share and refine's cut)."""
    arms: list[str] = dataclasses.field(default_factory=lambda: list(ARMS))
    """Arms to fine-tune and compare, each with the same number of steps."""
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0])
    """Fine-tuning seeds (data order and init); every arm runs once per seed."""
    weigh: dict[str, Any] = dataclasses.field(default_factory=dict)
    """``WeighConfig`` options."""
    refine: dict[str, Any] = dataclasses.field(default_factory=dict)
    """``RefineConfig`` options."""
    train: dict[str, Any] = dataclasses.field(default_factory=dict)
    """``TrainConfig`` options (``max_steps`` fixes every arm's budget)."""
    eval: dict[str, Any] = dataclasses.field(default_factory=dict)
    """``EvalConfig`` options."""

    def __post_init__(self) -> None:
        files = (self.pool, self.val, self.test)
        check((self.task is None) == all(f is not None for f in files) and (self.task is None or not any(files)),
               "give either a built-in task or all of pool, val and test files")
        check(0 < self.keep_top <= 1, "keep_top must be in (0, 1]")
        unknown = sorted(set(self.arms) - set(ARMS))
        check(not unknown and len(self.arms) > 0, f"unknown arms {unknown}; known: {list(ARMS)}")
        check(len(self.seeds) > 0 and len(set(self.seeds)) == len(self.seeds), "seeds must be distinct, at least one")
        for name, cls in self.stage_classes().items():
            self.stage(name, cls)  # fail now, naming the section, not in the middle of a run

    @staticmethod
    def stage_classes() -> dict[str, type]:
        return {"weigh": WeighConfig, "refine": RefineConfig, "train": TrainConfig, "eval": EvalConfig}

    def stage(self, name: str, cls: type[C], **fixed: Any) -> C:
        """One stage's resolved config: shared model options, then its section, then ``fixed``."""
        section = getattr(self, name) or {}
        check(isinstance(section, dict), f"section {name!r} must be a mapping")
        shared = {"model": self.model, "max_length": self.max_length, **self.model_options}
        if "keep_top" in {f.name for f in dataclasses.fields(cls)}:  # type: ignore[arg-type]
            shared["keep_top"] = self.keep_top
        return from_dict(cls, {**shared, **section, **fixed}, source=f"run config section {name!r}")
