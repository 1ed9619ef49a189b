"""The demo's run configs: the ``safety`` task end to end, sized for 2 CPU cores.

``winnow demo`` uses SmolLM2-135M-Instruct with LoRA on its last layers (backward passes stop
there) and sequences of at most 128 tokens: one seed takes about 7 minutes on 2 CPU cores, three
15 (README, "Demo results"); ``--quick`` uses the tiny random-init model and finishes in about 3 minutes (a smoke
test of every stage, not a result). Sizes are chosen from the timings in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

from winnow.config import RunConfig


def demo_config(*, quick: bool = False, seeds: int = 1) -> RunConfig:
    """The ``winnow demo`` run config (``seeds`` fine-tuning seeds per arm)."""
    if quick:
        return RunConfig(
            task="safety", pool_size=48, val_size=16, test_size=24, model="tiny", max_length=128,
            seeds=list(range(seeds)),
            weigh={"rounds": 3, "steps_per_round": 4, "model_lr": 0.1},  # the tiny model: the synthetic recipe
            refine={"rounds": 1, "steps_per_round": 4, "samples_per_question": 2, "max_new_tokens": 16,
                    "model_lr": 1e-3},
            train={"max_steps": 40, "batch_size": 8, "lr": 2e-3, "save_every": 20},
            eval={"max_new_tokens": 12},
        )
    return RunConfig(
        task="safety", pool_size=96, val_size=32, test_size=48, model="smollm2-135m", max_length=128,
        model_options={"lora_r": 16, "lora_layers": 8}, seeds=list(range(seeds)),
        weigh={},  # the measured default recipe (benchmarks/RESULTS.md): one round, one SGD step, sequence-sum gap
        refine={"rounds": 2, "steps_per_round": 6, "samples_per_question": 2, "max_new_tokens": 48,
                "model_lr": 2e-3, "gamma": 0.5},
        train={"max_steps": 40, "batch_size": 8, "lr": 2e-3, "save_every": 10},
        eval={"max_new_tokens": 32},
    )
