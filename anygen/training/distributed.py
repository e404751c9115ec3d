"""Training on several processes: how a recipe's model is wrapped (DDP, FSDP2, DeepSpeed ZeRO) and the collective
full state its checkpoints and exports are made of.

The wrapping is what ``accelerate launch --config_file configs/accelerate/<name>.yaml`` asked for (accelerate passes
it on in the environment). With GPUs accelerate wraps the model itself. Without one it cannot: it silently falls
back to DDP when given FSDP, and it does not start DeepSpeed. So on CPU processes (gloo) :func:`prepare` applies
FSDP2 itself (``fully_shard`` per decoder layer class named by the config, then the root), and
:func:`make_accelerator` starts DeepSpeed through accelerate on a gloo process group: the recipe's step
(``accelerator.backward``, ``clip_grad_norm_``, ``optimizer.step``) is the same code on CPU as on GPU.

A checkpoint holds the FULL model and optimizer state whatever the wrapping, keyed by parameter name (the format of
``torch.distributed.checkpoint``'s full state dicts): every process takes part in gathering it, the main process
writes it; at resume every process loads it and keeps its own shard. So a run can resume on another number of
processes or under another wrapping, and a sharded run exports a plain AnyGen directory.

Example:
    >>> accelerator = make_accelerator("no", grad_accum=1)                           # doctest: +SKIP
    >>> run = prepare(accelerator, model, optimizer, micro_batch=16, grad_clip=1.0)  # doctest: +SKIP
    >>> model_state, optimizer_state = gather_state(accelerator, run)                # doctest: +SKIP
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any, Literal

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from anygen.errors import CheckpointError, InvalidArgumentError

Strategy = Literal["single", "ddp", "fsdp", "deepspeed"]
SHARDED: tuple[Strategy, ...] = ("fsdp", "deepspeed")
State = dict[str, Any]


@dataclass
class Prepared:
    """A model and optimizer ready to train: ``model`` / ``optimizer`` as the recipe calls them, the ``strategy``,
    ``names`` (parameter names of each optimizer group, as built) and, for a sharded run on the main process, a
    ``blueprint``: a copy of the model without parameter storage that the gathered weights fill at export."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    strategy: Strategy
    names: list[list[str]]
    blueprint: nn.Module | None = None


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() == "true"


def make_accelerator(mixed_precision: str, grad_accum: int, **tracking: Any) -> Accelerator:
    """The accelerator of a run: CPU when no GPU; DeepSpeed (if launched with a DeepSpeed config) on gloo there.
    ``tracking``: its trackers (``log_with``, ``project_config``; :func:`anygen.training.core_metrics.tracking`)."""
    cuda = torch.cuda.is_available()
    deepspeed = _flag("ACCELERATE_USE_DEEPSPEED") and int(os.environ.get("LOCAL_RANK", -1)) >= 0
    if deepspeed and not cuda:
        # accelerate has no CPU backend for DeepSpeed: name gloo before the Accelerator creates the process group.
        PartialState(backend="gloo")
    accelerator = Accelerator(cpu=not (cuda or deepspeed), mixed_precision=mixed_precision,
                              gradient_accumulation_steps=grad_accum, **tracking)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        # Every process builds the whole model and DeepSpeed partitions it in `prepare`. Left in place, this
        # setting makes transformers build ZeRO-3 models under zero.Init, a collective, while the main process
        # builds alone (it trains the text BPE first) -- a deadlock.
        from transformers.integrations import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
    return accelerator


def prepare(accelerator: Accelerator, model: nn.Module, optimizer: torch.optim.Optimizer, *, micro_batch: int,
            grad_clip: float, activation_checkpointing: bool = False) -> Prepared:
    """Wrap ``model`` and ``optimizer`` for the processes of ``accelerator``.

    Args:
        accelerator: from :func:`make_accelerator`.
        model: the plain model (an :class:`~anygen.model.AnyGen`), on the CPU.
        optimizer: a torch optimizer over ``model``'s parameters (no step taken yet).
        micro_batch: rows per micro-batch and process (fills DeepSpeed's ``train_micro_batch_size_per_gpu: auto``).
        grad_clip: the recipe's clipping norm (fills DeepSpeed's ``gradient_clipping: auto``; 0 is off).
        activation_checkpointing: recompute each decoder layer's activations in the backward pass.
    """
    if activation_checkpointing:
        core = getattr(model, "core", model)
        core.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    names = _group_names(model, optimizer)
    strategy = strategy_of(accelerator)
    blueprint = parameter_free_copy(model) if strategy in SHARDED and accelerator.is_main_process else None
    if strategy == "deepspeed":
        _fill_deepspeed_autos(accelerator, micro_batch, grad_clip)
    if strategy == "fsdp" and accelerator.distributed_type != DistributedType.FSDP:
        _fully_shard(model, optimizer, accelerator.mixed_precision)
        return Prepared(model, accelerator.prepare(optimizer), strategy, names, blueprint)
    model, optimizer = accelerator.prepare(model, optimizer)
    return Prepared(model, optimizer, strategy, names, blueprint)


def strategy_of(accelerator: Accelerator) -> Strategy:
    """How the run spreads the model: one process, DDP, FSDP (by accelerate, or by :func:`prepare` on CPU) or
    DeepSpeed."""
    kind = accelerator.distributed_type
    if kind == DistributedType.DEEPSPEED:
        return "deepspeed"
    if kind == DistributedType.FSDP or (kind == DistributedType.MULTI_CPU and _flag("ACCELERATE_USE_FSDP")):
        return "fsdp"
    return "ddp" if accelerator.num_processes > 1 else "single"


def _group_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[list[str]]:
    name_of = {id(p): name for name, p in model.named_parameters()}
    try:
        return [[name_of[id(p)] for p in group["params"]] for group in optimizer.param_groups]
    except KeyError as err:
        raise InvalidArgumentError("the optimizer holds a parameter that is not the model's") from err


# ---- FSDP2 without accelerate's help (CPU processes) ------------------------------------------------------------
def _fully_shard(model: nn.Module, optimizer: torch.optim.Optimizer, mixed_precision: str) -> None:
    """``fully_shard`` each module of the configured layer classes, then the root; the optimizer is pointed at the
    sharded parameters (``fully_shard`` replaces them)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    classes = _layer_classes(model, os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP", ""))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)
    options: dict[str, Any] = {"reshard_after_forward": os.environ.get("FSDP_RESHARD_AFTER_FORWARD") != "false"}
    if dtype is not None:
        options["mp_policy"] = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    before = {id(p): name for name, p in model.named_parameters()}
    for module in [m for m in model.modules() if isinstance(m, classes)]:
        fully_shard(module, **options)
    fully_shard(model, **options)
    after = dict(model.named_parameters())
    for group in optimizer.param_groups:
        group["params"] = [after[before[id(p)]] for p in group["params"]]


def _layer_classes(model: nn.Module, names: str) -> tuple[type, ...]:
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    found = {type(m).__name__: type(m) for m in model.modules()}
    missing = [n for n in wanted if n not in found]
    if not wanted or missing:
        layers = sorted(n for n in found if n.endswith("DecoderLayer"))
        raise InvalidArgumentError(f"fsdp_transformer_layer_cls_to_wrap={names!r} must name the model's layer "
                                   f"class(es); this model has {layers}")
    return tuple(found[n] for n in wanted)


# ---- DeepSpeed settings the recipe knows ------------------------------------------------------------------------
def _fill_deepspeed_autos(accelerator: Accelerator, micro_batch: int, grad_clip: float) -> None:
    """The recipe passes no DataLoader to ``prepare``, so ``auto`` micro-batch and clipping come from its config."""
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    if config.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        config["train_micro_batch_size_per_gpu"] = micro_batch
    if config.get("gradient_clipping", "auto") == "auto":
        config["gradient_clipping"] = grad_clip


# ---- the blueprint of a sharded model ---------------------------------------------------------------------------
def parameter_free_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters live on the meta device (no storage; shared ones stay shared)."""
    memo: dict[int, Any] = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
                            for p in model.parameters()}
    return copy.deepcopy(model, memo)


def fill_blueprint(blueprint: nn.Module, state: State) -> nn.Module:
    """``blueprint`` with its meta parameters replaced by the tensors of the full ``state`` (no copy)."""
    made: dict[int, nn.Parameter] = {}
    for prefix, module in blueprint.named_modules(remove_duplicate=False):
        for name, param in list(module.named_parameters(recurse=False)):
            key = f"{prefix}.{name}" if prefix else name
            if key not in state:
                raise CheckpointError(f"the gathered state has no tensor {key!r}")
            if id(param) not in made:
                made[id(param)] = nn.Parameter(state[key].to(param.dtype), requires_grad=param.requires_grad)
            module.register_parameter(name, made[id(param)])
    buffers = dict(blueprint.named_buffers())
    blueprint.load_state_dict({k: v for k, v in state.items() if k in buffers}, strict=False)
    return blueprint


# ---- collective state -------------------------------------------------------------------------------------------
_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def gather_state(accelerator: Accelerator, run: Prepared) -> tuple[State | None, State | None]:
    """The full model and optimizer state dicts on the main process (``None`` on the others). Every process must
    call it: it gathers the shards."""
    model_state = _gather_model(run)
    if run.strategy == "deepspeed":
        optimizer_state = _deepspeed_optimizer_state(run)
    else:
        optimizer_state = get_optimizer_state_dict(run.model, _torch_optimizer(run.optimizer), options=_FULL)
    if not accelerator.is_main_process:
        return None, None
    return model_state, optimizer_state


def restore_state(run: Prepared, model_state: State, optimizer_state: State) -> None:
    """Load the full state dicts of a checkpoint into a prepared run (every process, each keeping its shard)."""
    optimizer_state = by_name(optimizer_state, run.names)
    if run.strategy == "deepspeed":
        _deepspeed_restore(run, model_state, optimizer_state)
        return
    set_model_state_dict(run.model, model_state, options=StateDictOptions(full_state_dict=True))
    set_optimizer_state_dict(run.model, _torch_optimizer(run.optimizer), optimizer_state,
                             options=StateDictOptions(full_state_dict=True))


def full_model(accelerator: Accelerator, run: Prepared) -> nn.Module | None:
    """The trained model, whole and unwrapped, on the main process (``None`` on the others); collective."""
    if run.strategy not in SHARDED:
        return accelerator.unwrap_model(run.model) if accelerator.is_main_process else None
    model_state = _gather_model(run)
    return fill_blueprint(run.blueprint, model_state) if accelerator.is_main_process else None


def _gather_model(run: Prepared) -> State:
    if run.strategy == "deepspeed":
        return _deepspeed_model_state(run)
    return get_model_state_dict(run.model, options=_FULL)  # full tensors on the main process only


def by_name(optimizer_state: State, names: list[list[str]]) -> State:
    """An optimizer state dict keyed by parameter name; one keyed by position (``optimizer.state_dict()``, the
    format of earlier checkpoints) is converted using the names of each group."""
    if all(isinstance(k, str) for k in optimizer_state["state"]):
        return optimizer_state
    order = [name for group in names for name in group]
    if len(optimizer_state["param_groups"]) != len(names):
        raise CheckpointError(f"the checkpoint's optimizer has {len(optimizer_state['param_groups'])} parameter "
                              f"groups, this run's has {len(names)}")
    state = {order[int(i)]: value for i, value in optimizer_state["state"].items()}
    groups = [{**group, "params": [order[int(i)] for i in group["params"]]}
              for group in optimizer_state["param_groups"]]
    return {"state": state, "param_groups": groups}


def _torch_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    while hasattr(optimizer, "optimizer"):  # accelerate's AcceleratedOptimizer wraps the torch one
        optimizer = optimizer.optimizer
    return optimizer


# ---- DeepSpeed: per-parameter gather / scatter through its tensor-fragment API ----------------------------------
ADAM_KEYS = ("exp_avg", "exp_avg_sq")


def _deepspeed_model_state(run: Prepared) -> State:
    from deepspeed.runtime.zero import GatheredParameters
    from deepspeed.utils import safe_get_full_fp32_param

    module = run.model.module
    params = dict(module.named_parameters(remove_duplicate=False))
    model_state: State = {}
    for key, value in module.state_dict(keep_vars=True).items():
        param = params.get(key)
        if param is None:
            model_state[key] = value.detach().cpu().clone()  # a buffer: never partitioned
        elif param.requires_grad:
            model_state[key] = safe_get_full_fp32_param(param).cpu()  # the fp32 master, not the bf16 copy
        else:
            with GatheredParameters([param]):
                model_state[key] = param.detach().cpu().clone()
    return model_state


def _deepspeed_optimizer_state(run: Prepared) -> State:
    from deepspeed.utils import safe_get_full_optimizer_state

    module = run.model.module
    _link_fragments(_zero_optimizer(run))
    step = _deepspeed_step(run)
    state = {name: {"step": step.clone(), **{k: safe_get_full_optimizer_state(p, k).cpu() for k in ADAM_KEYS}}
             for name, p in module.named_parameters() if p.requires_grad}
    hyper = [{k: v for k, v in g.items() if k != "params"} for g in run.optimizer.param_groups]
    groups = [{**h, "params": names} for h, names in zip(hyper, run.names)]
    return {"state": state, "param_groups": groups}


def _deepspeed_restore(run: Prepared, model_state: State, optimizer_state: State) -> None:
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state
    from deepspeed.runtime.zero import GatheredParameters

    module = run.model.module
    for name, param in module.named_parameters():
        if name not in model_state:
            raise CheckpointError(f"the checkpoint has no weights for {name!r}")
        with GatheredParameters([param], modifier_rank=0):
            param.data.copy_(model_state[name])
        if param.requires_grad:
            safe_set_full_fp32_param(param, model_state[name].float())
    steps = {float(s["step"]) for s in optimizer_state["state"].values()}
    _deepspeed_adam_state(run, steps.pop() if steps else 0.0)
    for name, param in module.named_parameters():
        if param.requires_grad:
            saved = optimizer_state["state"].get(name)
            if saved is None:
                raise CheckpointError(f"the checkpoint has no optimizer state for {name!r}")
            for key in ADAM_KEYS:
                safe_set_full_optimizer_state(param, saved[key].float(), key)


def _zero_optimizer(run: Prepared) -> Any:
    return run.optimizer.optimizer  # accelerate's wrapper -> DeepSpeed's ZeRO optimizer


def _deepspeed_step(run: Prepared) -> torch.Tensor:
    inner = _zero_optimizer(run).optimizer  # the torch optimizer over DeepSpeed's flat fp32 partitions
    steps = [s["step"] for s in inner.state.values() if "step" in s]
    return torch.as_tensor(steps[0] if steps else 0.0, dtype=torch.float32).detach().cpu()


def _deepspeed_adam_state(run: Prepared, step: float) -> None:
    """Adam keeps its state lazily: create it (zeros, the saved step) so the saved moments can be scattered in."""
    zero = _zero_optimizer(run)
    inner = zero.optimizer
    for flat in _fp32_partitions(zero):
        state = inner.state[flat]
        for key in ADAM_KEYS:
            state.setdefault(key, torch.zeros_like(flat, memory_format=torch.preserve_format))
        state["step"] = torch.tensor(step, dtype=torch.float32)
    _link_fragments(zero)


def _fp32_partitions(zero: Any) -> list[torch.Tensor]:
    """This process' flat fp32 partitions, the parameters of DeepSpeed's inner optimizer (ZeRO-3 hands them to it
    only during its step, so they are read from the ZeRO optimizer: stage 3, stages 1-2, bf16 without ZeRO)."""
    for name in ("fp32_partitioned_groups_flat", "single_partition_of_fp32_groups", "fp32_groups_flat_partition"):
        if hasattr(zero, name):
            return list(getattr(zero, name))
    raise CheckpointError(f"cannot find the fp32 partitions of DeepSpeed's {type(zero).__name__}")


def _link_fragments(zero: Any) -> None:
    """ZeRO-1/2 map each parameter onto its slice of the optimizer state once, after the step of the FIRST
    parameter group, so the later groups' parameters stay unmapped; map them all again (ZeRO-3 needs no map)."""
    if hasattr(zero, "_lazy_init_hp_params_optimizer_state"):
        zero._hp_optimizer_states_linked = False
        zero._lazy_init_hp_params_optimizer_state()
