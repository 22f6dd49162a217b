"""Training: train state + optimizer, chunked log-probs, sequence packing, the jitted update step, the PPO critic."""

from rlvr_jax.training.critic import (
    CRITIC_BATCH_KEYS,
    CriticRunner,
    compute_values,
    critic_abstract_params,
    critic_logical_axes,
    critic_params_from_model,
    init_value_head,
)
from rlvr_jax.training.logprobs import BATCH_KEYS, compute_logprobs, params_shardings, response_logprobs
from rlvr_jax.training.packing import PackedPlan, compute_logprobs_packed, plan_packing
from rlvr_jax.training.state import (
    SCHEDULES,
    OptimizerConfig,
    TrainState,
    apply_gradients,
    create_train_state,
    make_optimizer,
    make_schedule,
    state_shardings,
)
from rlvr_jax.training.update import (
    ACTOR_BATCH_KEYS,
    UpdateConfig,
    make_actor_loss_fn,
    make_critic_update_fn,
    make_update_fn,
)

__all__ = [
    "ACTOR_BATCH_KEYS",
    "BATCH_KEYS",
    "CRITIC_BATCH_KEYS",
    "CriticRunner",
    "SCHEDULES",
    "OptimizerConfig",
    "PackedPlan",
    "TrainState",
    "UpdateConfig",
    "apply_gradients",
    "compute_logprobs",
    "compute_logprobs_packed",
    "compute_values",
    "create_train_state",
    "critic_abstract_params",
    "critic_logical_axes",
    "critic_params_from_model",
    "init_value_head",
    "make_actor_loss_fn",
    "make_critic_update_fn",
    "make_optimizer",
    "make_schedule",
    "make_update_fn",
    "params_shardings",
    "plan_packing",
    "response_logprobs",
    "state_shardings",
]
