"""The RL algorithm: advantages, losses, KL, batches, backends (torch, Megatron) and checkpoints."""
