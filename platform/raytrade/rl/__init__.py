"""RL agents: env registration for RLlib, PPO training (new API stack) and the inference policy."""
