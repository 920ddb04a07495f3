"""Placing the frozen teacher next to a student trained under DDP, FSDP or DeepSpeed ZeRO-3.

The teacher is always built from a model folder (:class:`~factkeep.methods.teacher.Teacher`),
never deep-copied from the student, which under FSDP or ZeRO-3 holds only a shard of each
parameter on every process. This module then places it the way the student's distribution
strategy needs (``accelerator`` is the Trainer's ``self.accelerator``):

- no distribution, or DDP (``torchrun`` / ``accelerate launch`` with several processes): a full
  copy on each process's device. The teacher has no trainable parameter, so it needs no DDP
  wrapper;
- DeepSpeed ZeRO-3: the teacher becomes an inference-only DeepSpeed engine with the same ZeRO-3
  configuration (its parameters are sharded too and gathered layer by layer in the forward pass;
  no optimizer); other ZeRO stages keep a full copy per process;
- FSDP (v1): the teacher is wrapped in ``FullyShardedDataParallel`` with the plugin's sharding
  strategy, auto-wrap and mixed-precision policies; FSDP2: each decoder layer and the root are
  ``fully_shard``-ed with the plugin's settings.

Only the first two (single process and DDP on CPU) are exercised by the tests; the sharded paths
follow the accelerate / DeepSpeed APIs and need GPUs to run. Teachers that must read their full
parameters (the ``ema`` teacher, the ``l2_to_anchor`` control) are refused under sharding.

Example::

    place_teacher(teacher, trainer.accelerator)   # once, before the first teacher forward
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from accelerate.utils import DistributedType

from factkeep.errors import FactkeepError
from factkeep.methods.teacher import Teacher

__all__ = ["is_sharded", "place_teacher"]

log = logging.getLogger(__name__)


def _zero_stage(accelerator: Any) -> int:
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return int(plugin.zero_stage) if plugin is not None else 0


def is_sharded(accelerator: Any) -> bool:
    """Whether the student's parameters are sharded across processes (FSDP or ZeRO-3)."""
    kind = accelerator.distributed_type
    return kind == DistributedType.FSDP or (
        kind == DistributedType.DEEPSPEED and _zero_stage(accelerator) == 3
    )


def _deepspeed_engine(model: Any, accelerator: Any) -> Any:
    import deepspeed  # type: ignore[import-not-found]  # optional: only ZeRO-3 runs need it

    config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    for key in ("optimizer", "scheduler"):
        config.pop(key, None)
    config["zero_optimization"] = {
        **config.get("zero_optimization", {}),
        "stage": 3,
        "offload_optimizer": {"device": "none"},
    }
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    return engine


def _fsdp(model: Any, accelerator: Any) -> Any:
    plugin = accelerator.state.fsdp_plugin
    if getattr(accelerator, "is_fsdp2", False):
        # FSDP2 only: fully_shard needs torch >= 2.6, and the module is slow to import.
        from torch.distributed.fsdp import fully_shard

        kwargs = {
            "reshard_after_forward": plugin.reshard_after_forward,
            "offload_policy": plugin.cpu_offload,
            "mp_policy": plugin.mixed_precision_policy,
        }
        for layer in getattr(getattr(model, "model", model), "layers", []):
            fully_shard(layer, **kwargs)
        fully_shard(model, **kwargs)
        return model
    # FSDP only: torch.distributed.fsdp takes about a second to import.
    from torch.distributed.fsdp import FullyShardedDataParallel

    return FullyShardedDataParallel(
        model,
        sharding_strategy=plugin.sharding_strategy,
        cpu_offload=plugin.cpu_offload,
        auto_wrap_policy=plugin.auto_wrap_policy,
        mixed_precision=plugin.mixed_precision_policy,
        sync_module_states=plugin.sync_module_states,
        use_orig_params=plugin.use_orig_params,
        device_id=accelerator.device,
    )


def place_teacher(teacher: Teacher, accelerator: Any, needs_full_parameters: bool = False) -> None:
    """Move or wrap ``teacher.model`` for the student's distribution strategy (in place).

    Args:
        teacher: the frozen teacher, loaded from a model folder.
        accelerator: the Trainer's accelerator.
        needs_full_parameters: the method reads the teacher's parameters (EMA, L2 anchor).

    Raises:
        FactkeepError: ``needs_full_parameters`` under FSDP or ZeRO-3.
    """
    if needs_full_parameters and is_sharded(accelerator):
        raise FactkeepError(
            "the ema teacher and the l2_to_anchor control read full parameters and do not "
            "support FSDP or DeepSpeed ZeRO-3: use DDP (or ZeRO-1/2)"
        )
    kind = accelerator.distributed_type
    if kind == DistributedType.DEEPSPEED and _zero_stage(accelerator) == 3:
        teacher.model = _deepspeed_engine(teacher.model, accelerator)
    elif kind == DistributedType.FSDP:
        teacher.model = _fsdp(teacher.model, accelerator)
    else:
        teacher.model.to(accelerator.device)
    teacher.model.eval()
    log.info("teacher placed for %s on %s", kind, accelerator.device)
