"""Training for every non-LLM rankstack model: `Trainer`/`TrainerConfig`, atomic checkpoints, torchrun helpers.

See `rankstack.train.trainer` for the training loop and the run folder it writes.
"""

from rankstack.train.checkpoint import (
    atomic_write,
    best_weights_path,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    save_weights,
)
from rankstack.train.distributed import (
    all_gather_object,
    all_reduce_mean,
    barrier,
    broadcast_object,
    cleanup,
    get_rank,
    get_world_size,
    init_distributed,
    is_distributed,
    is_main_process,
)
from rankstack.train.rng import rng_state, seed_everything, set_rng_state
from rankstack.train.trainer import (
    EpochCursor,
    Trainer,
    TrainerConfig,
    TrainLoader,
    TrainState,
    split_parameters,
)

__all__ = [
    "Trainer",
    "TrainerConfig",
    "TrainLoader",
    "EpochCursor",
    "TrainState",
    "all_gather_object",
    "all_reduce_mean",
    "atomic_write",
    "barrier",
    "best_weights_path",
    "broadcast_object",
    "cleanup",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "load_checkpoint",
    "load_weights",
    "rng_state",
    "save_checkpoint",
    "save_weights",
    "seed_everything",
    "set_rng_state",
    "split_parameters",
]
