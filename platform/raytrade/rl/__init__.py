"""Reinforcement learning: env inputs built from forecaster bundles (``env_inputs``, ``inputs``), RLlib configs
(PPO, SAC, TD3 in ``td3``) and the SB3 backend trained as Ray tasks (``agents``), the inference ``Policy``
(never imports training code), agent ensembles and the risk layer (``ensemble``), and the strategy backtests of
agents and ensembles (``strategies``)."""
