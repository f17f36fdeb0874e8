"""TD3 on RLlib's new API stack (:mod:`raytrade.rl.td3`): mechanics on hand-made batches, learning on
Pendulum-v1 against a uniform-random policy, a short run on the trading env with a remote EnvRunner, and
the RLModule checkpoint round trip.

Fujimoto, van Hoof, Meger, "Addressing Function Approximation Error in Actor-Critic Methods", ICML 2018.
"""

from __future__ import annotations

import time

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
import torch
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModule, RLModuleSpec
from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch

from conftest import BUNDLED
from raytrade.rl.td3 import TD3, TD3Config, TD3TorchLearner, TD3TorchRLModule
from raytrade.rl.td3.learner import CRITIC_OPTIMIZER

PENDULUM = "Pendulum-v1"
EVAL_SEEDS = range(1000, 1010)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny MLPs: intra-op threads only contend on the 2-core CI machines (10x slower with 2 threads)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ------------------------------------------------------------------ helpers
def deterministic_action(module: RLModule, obs: np.ndarray) -> np.ndarray:
    """The generic deterministic action of an RLlib module, normalized ``[-1, 1]`` space: ``(n, A)``."""
    with torch.no_grad():
        out = module.forward_inference({Columns.OBS: torch.as_tensor(np.atleast_2d(obs), dtype=torch.float32)})
        dist_cls = module.get_inference_action_dist_cls()
        return dist_cls.from_logits(out[Columns.ACTION_DIST_INPUTS]).to_deterministic().sample().numpy()


def episode_returns(policy, seeds=EVAL_SEEDS) -> np.ndarray:
    """Undiscounted Pendulum-v1 returns of ``policy(obs) -> env action`` on the given reset seeds."""
    env = gym.make(PENDULUM)
    returns = []
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(policy(obs))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return np.asarray(returns)


def tiny_learner(**training) -> TD3TorchLearner:
    """A local TD3 learner for Pendulum's spaces (obs (3,), action (1,)), small nets, no Ray needed."""
    config = (
        TD3Config()
        .environment(PENDULUM)
        .training(model_config={"fcnet_hiddens": [16, 16]}, **training)
        .debugging(seed=0)
    )
    return config.build_learner(env=gym.make(PENDULUM))


def hand_batch(n: int = 8, seed: int = 0, terminated: np.ndarray | None = None) -> SampleBatch:
    rng = np.random.default_rng(seed)
    return SampleBatch({
        Columns.OBS: rng.normal(size=(n, 3)).astype(np.float32),
        Columns.NEXT_OBS: rng.normal(size=(n, 3)).astype(np.float32),
        Columns.ACTIONS: rng.uniform(-1, 1, size=(n, 1)).astype(np.float32),
        Columns.REWARDS: rng.normal(size=n).astype(np.float32),
        Columns.TERMINATEDS: np.zeros(n, dtype=bool) if terminated is None else terminated,
    })


def tensors(batch: SampleBatch) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v) for k, v in batch.items()}


def params(net: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


# ---------------------------------------------------------------- mechanics
def test_target_policy_smoothing_noise_is_clipped():
    learner = tiny_learner()
    module = learner.module[DEFAULT_MODULE_ID].unwrapped()
    obs = torch.as_tensor(np.random.default_rng(1).normal(size=(4096, 3)), dtype=torch.float32)
    with torch.no_grad():
        mu_target = module.actor(obs, target=True)
        torch.manual_seed(0)
        smoothed = module.target_actions(obs, noise_std=10.0, noise_clip=0.3)
        exact = module.target_actions(obs, noise_std=0.0, noise_clip=0.3)
    noise = smoothed - mu_target
    assert torch.all(smoothed.abs() <= 1.0)
    # noise clipped to [-c, c] (then the action to [-1, 1]); with std 10 almost every draw hits a bound
    assert torch.all(noise.abs() <= 0.3 + 1e-6)
    at_bound = (noise.abs() - 0.3).abs() < 1e-5
    at_box = smoothed.abs() > 1.0 - 1e-6
    assert (at_bound | at_box).float().mean() > 0.9
    assert (noise > 0).any() and (noise < 0).any()
    assert torch.equal(exact, torch.clamp(mu_target, -1.0, 1.0))


def test_critic_target_is_min_of_twin_targets_with_terminal_masking():
    learner = tiny_learner(gamma=0.9, target_noise=0.0)
    module = learner.module[DEFAULT_MODULE_ID].unwrapped()
    config = learner.config.get_config_for_module(DEFAULT_MODULE_ID)
    batch = tensors(hand_batch(n=16, terminated=np.arange(16) % 4 == 0))

    def critic_loss() -> float:
        fwd = module.forward_train(batch)
        learner.compute_loss_for_module(module_id=DEFAULT_MODULE_ID, config=config, batch=batch, fwd_out=fwd)
        loss = learner._temp_losses.pop((DEFAULT_MODULE_ID, CRITIC_OPTIMIZER))
        learner._temp_losses.clear()
        return float(loss.detach())

    def expected(pick) -> float:
        with torch.no_grad():
            a_next = module.actor(batch[Columns.NEXT_OBS], target=True)
            q_next = pick(module._q(module.target_qf, batch[Columns.NEXT_OBS], a_next),
                          module._q(module.target_qf_twin, batch[Columns.NEXT_OBS], a_next))
            y = batch[Columns.REWARDS] + 0.9 * (1.0 - batch[Columns.TERMINATEDS].float()) * q_next
            q = module.compute_q_values({Columns.OBS: batch[Columns.OBS], Columns.ACTIONS: batch[Columns.ACTIONS]})
            return float(((q["qf_preds"] - y) ** 2).mean() + ((q["qf_twin_preds"] - y) ** 2).mean())

    def out_bias(net):
        return list(net.parameters())[-1]

    with torch.no_grad():
        out_bias(module.target_qf_twin).add_(50.0)  # twin target much larger: min picks Q1_target
    assert critic_loss() == pytest.approx(expected(lambda q1, q2: q1), rel=1e-5)
    assert critic_loss() != pytest.approx(expected(lambda q1, q2: q2), rel=1e-3)
    with torch.no_grad():
        out_bias(module.target_qf).add_(100.0)  # now Q1_target is the larger one: min picks Q2_target
    assert critic_loss() == pytest.approx(expected(lambda q1, q2: q2), rel=1e-5)
    assert critic_loss() == pytest.approx(expected(torch.min), rel=1e-5)
    # terminal transitions do not bootstrap: the loss does not depend on their next observation
    with torch.no_grad():
        before = critic_loss()
        batch[Columns.NEXT_OBS][batch[Columns.TERMINATEDS]] += 100.0
        assert critic_loss() == pytest.approx(before, rel=1e-5)


def test_delayed_actor_and_soft_target_updates():
    tau = 0.25
    learner = tiny_learner(policy_delay=3, tau=tau)
    module = learner.module[DEFAULT_MODULE_ID].unwrapped()
    pairs = module.get_target_network_pairs()
    actor_history, changed_actor, changed_critic, moved_targets = [params(module.pi)], [], [], []
    for step in range(1, 7):
        critic_before = params(module.qf) + params(module.qf_twin)
        targets_before = [params(target) for _, target in pairs]
        batch = MultiAgentBatch({DEFAULT_MODULE_ID: hand_batch(seed=step)}, env_steps=8)
        learner.update(batch=batch, timesteps={"num_env_steps_sampled_lifetime": step})
        actor_history.append(params(module.pi))
        changed_actor.append(not same(actor_history[-2], actor_history[-1]))
        changed_critic.append(not same(critic_before, params(module.qf) + params(module.qf_twin)))
        targets_after = [params(target) for _, target in pairs]
        moved_targets.append(not all(same(b, a) for b, a in zip(targets_before, targets_after, strict=True)))
        if moved_targets[-1]:
            # Polyak averaging of actor and both critics: target <- tau * main + (1 - tau) * target
            for (main, _), before, after in zip(pairs, targets_before, targets_after, strict=True):
                for p, b, a in zip(main.parameters(), before, after, strict=True):
                    torch.testing.assert_close(a, tau * p.detach() + (1.0 - tau) * b)
    assert changed_critic == [True] * 6
    assert changed_actor == [False, False, True, False, False, True]
    assert moved_targets == [False, False, True, False, False, True]
    assert learner._num_critic_updates[DEFAULT_MODULE_ID] == 6
    # the actor's Adam state only advanced on its own (delayed) steps
    actor_optim = learner.get_optimizer(DEFAULT_MODULE_ID, "policy")
    assert {int(s["step"]) for s in actor_optim.state.values()} == {2}


def test_exploration_noise_and_random_warmup():
    obs_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
    act_space = gym.spaces.Box(-2.0, 2.0, (2,), np.float32)
    module = RLModuleSpec(module_class=TD3TorchRLModule, observation_space=obs_space, action_space=act_space,
                          inference_only=True,
                          model_config={"fcnet_hiddens": [8], "exploration_noise": 0.2, "random_steps": 100}).build()
    obs = torch.zeros((20000, 3))
    mu = torch.as_tensor(deterministic_action(module, obs.numpy()))
    assert mu.shape == (20000, 2) and torch.all(mu.abs() <= 1.0)
    dist_cls = module.get_exploration_action_dist_cls()
    torch.manual_seed(0)
    explore = dist_cls.from_logits(module.forward_exploration({Columns.OBS: obs}, t=100)[Columns.ACTION_DIST_INPUTS])
    actions = explore.sample()
    assert torch.all(actions.abs() <= 1.0)
    inside = (actions.abs() < 1.0).all(dim=1)
    assert (actions - mu)[inside].std(dim=0).numpy() == pytest.approx([0.2, 0.2], abs=0.02)
    torch.testing.assert_close(explore.to_deterministic().sample(), mu)
    warmup = dist_cls.from_logits(module.forward_exploration({Columns.OBS: obs}, t=99)[Columns.ACTION_DIST_INPUTS])
    uniform = warmup.sample()
    assert uniform.mean().abs() < 0.05 and uniform.std() > 0.5  # ~U(-1, 1) (+ noise), not ~mu + noise


def test_config_knobs_and_validation():
    config = TD3Config().training(policy_delay=3, target_noise=0.3, target_noise_clip=0.4, exploration_noise=0.05,
                                  buffer_capacity=5000, train_batch_size=64, actor_lr=1e-3, critic_lr=2e-3,
                                  tau=0.01, gamma=0.95, num_steps_sampled_before_learning_starts=300,
                                  model_config={"fcnet_hiddens": [32, 32]})
    assert (config.policy_delay, config.target_noise, config.target_noise_clip) == (3, 0.3, 0.4)
    assert config.replay_buffer_config == {"type": "EpisodeReplayBuffer", "capacity": 5000}
    assert config.total_train_batch_size == 64
    assert config.algo_class is TD3
    assert config.model_config["fcnet_hiddens"] == [32, 32]
    assert config.model_config["exploration_noise"] == 0.05
    assert config.model_config["random_steps"] == 300  # defaults to the learning start
    assert TD3Config().training(random_steps=0).model_config["random_steps"] == 0
    config.environment(PENDULUM).validate()
    with pytest.raises(ValueError, match="policy_delay"):
        TD3Config().environment(PENDULUM).training(policy_delay=0).validate()
    with pytest.raises(ValueError, match="normalize_actions"):
        TD3Config().environment(PENDULUM, normalize_actions=False).validate()


def test_module_checkpoint_round_trip(tmp_path):
    obs_space = gym.spaces.Box(-np.inf, np.inf, (5,), np.float32)
    act_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    module = RLModuleSpec(module_class=TD3TorchRLModule, observation_space=obs_space, action_space=act_space,
                          model_config={"fcnet_hiddens": [12, 7], "exploration_noise": 0.3}).build()
    module.save_to_path(tmp_path / "module")
    restored = RLModule.from_checkpoint(tmp_path / "module")
    assert type(restored) is TD3TorchRLModule and not restored.inference_only
    assert restored.exploration_noise == 0.3
    obs = np.random.default_rng(0).normal(size=(32, 5)).astype(np.float32)
    np.testing.assert_array_equal(deterministic_action(restored, obs), deterministic_action(module, obs))
    batch = {Columns.OBS: torch.as_tensor(obs), Columns.ACTIONS: torch.zeros((32, 1))}
    with torch.no_grad():
        for key, value in module.compute_q_values(batch).items():
            torch.testing.assert_close(restored.compute_q_values(batch)[key], value)
    for a, b in zip(module.state_dict().values(), restored.state_dict().values(), strict=True):
        assert torch.equal(a, b)


# ----------------------------------------------------------------- learning
def test_default_config_builds_and_trains(ray_local):
    """``TD3Config().environment(...).build_algo().train()`` with the paper defaults (256-256 nets, batch 256)."""
    algo = TD3Config().environment(PENDULUM).training(num_steps_sampled_before_learning_starts=50).build_algo()
    try:
        assert isinstance(algo, TD3)
        result = algo.train()
        module = algo.get_module()
    finally:
        algo.stop()
    stats = result["learners"][DEFAULT_MODULE_ID]
    assert stats["num_critic_updates"] >= 1 and np.isfinite(stats["qf_loss"])
    assert isinstance(module, TD3TorchRLModule) and module.random_steps == 50
    assert [layer.out_features for layer in module.pi.modules() if isinstance(layer, torch.nn.Linear)] == [256, 256, 1]


@pytest.mark.slow  # about 1.5 minutes of learning (make test-slow; CI runs it)
def test_td3_learns_pendulum(ray_local, tmp_path):
    """TD3 on Pendulum-v1: the deterministic policy clearly beats a uniform-random one on the same seeds."""
    env_steps = 4000
    config = (
        TD3Config()
        .environment(PENDULUM)
        .env_runners(num_env_runners=0, rollout_fragment_length=50)
        .training(
            gamma=0.98, tau=0.02, actor_lr=1e-3, critic_lr=1e-3, train_batch_size=64,
            num_steps_sampled_before_learning_starts=500, training_intensity=64,  # one update per env step
            model_config={"fcnet_hiddens": [128, 128]},
        )
        .reporting(min_sample_timesteps_per_iteration=500, min_time_s_per_iteration=0)
        .debugging(seed=0)
    )
    algo = config.build_algo()
    start = time.monotonic()
    try:
        result = {}
        while result.get("env_runners", {}).get("num_env_steps_sampled_lifetime", 0) < env_steps:
            result = algo.train()
        train_seconds = time.monotonic() - start
        learner_stats = result["learners"][DEFAULT_MODULE_ID]
        module = algo.get_module()
        module.save_to_path(tmp_path / "module")
    finally:
        algo.stop()
    assert learner_stats["num_critic_updates"] >= env_steps - 1000
    assert learner_stats["num_actor_updates"] == pytest.approx(learner_stats["num_critic_updates"] / 2, abs=1)

    restored = RLModule.from_checkpoint(tmp_path / "module")
    td3 = episode_returns(lambda obs: 2.0 * np.clip(deterministic_action(restored, obs)[0], -1.0, 1.0))
    rng = np.random.default_rng(0)
    random = episode_returns(lambda obs: rng.uniform(-2.0, 2.0, size=(1,)).astype(np.float32))
    print(f"TD3 Pendulum-v1 after {env_steps} env steps ({train_seconds:.0f} s): "
          f"mean return {td3.mean():.0f} vs random {random.mean():.0f}")
    assert -1500 < random.mean() < -1000
    assert td3.mean() > random.mean() + 400


# ---------------------------------------------------------------- trading env
def trading_arrays(n_bars: int = 1500) -> tuple[np.ndarray, np.ndarray]:
    """Scaled causal log-return features ``(T, 3)`` and next-bar log returns ``(T,)`` of bundled BTC bars."""
    close = pd.read_parquet(BUNDLED, columns=["timestamp", "close"]).sort_values("timestamp")["close"]
    log_close = np.log(close.astype(float).to_numpy()[-(n_bars + 200):])
    r1 = np.diff(log_close, prepend=np.nan)
    frame = pd.DataFrame({"r1": r1})
    vol = frame["r1"].rolling(24).std()
    features = pd.DataFrame({
        "r1": frame["r1"] / vol,
        "r6": frame["r1"].rolling(6).sum() / (vol * np.sqrt(6.0)),
        "r24": frame["r1"].rolling(24).sum() / (vol * np.sqrt(24.0)),
    })
    forward = pd.Series(np.append(log_close[1:] - log_close[:-1], np.nan))
    table = pd.concat([features, forward.rename("fwd")], axis=1).dropna().iloc[-n_bars:]
    return table[features.columns].to_numpy(np.float32), table["fwd"].to_numpy(np.float64)


def test_td3_on_trading_env_with_remote_env_runner(ray_local, tmp_path):
    from raytrade.rl.env import env_config, make_env, register_trading_env

    features, returns = trading_arrays()
    cfg = env_config(features=features, returns=returns, forecasts=None, window=8, cost_bps=10.0,
                     episode_length=200, random_start=True)
    config = (
        TD3Config()
        .environment(register_trading_env(), env_config=cfg)
        .env_runners(num_env_runners=1, rollout_fragment_length=50)
        .training(train_batch_size=32, num_steps_sampled_before_learning_starts=100, training_intensity=16,
                  model_config={"fcnet_hiddens": [32, 32]})
        .reporting(min_sample_timesteps_per_iteration=200, min_time_s_per_iteration=0)
        .debugging(seed=0)
    )
    algo = config.build_algo()
    try:
        for _ in range(2):
            result = algo.train()
        module = algo.get_module()
        module.save_to_path(tmp_path / "module")
    finally:
        algo.stop()
    assert result["env_runners"]["num_env_steps_sampled_lifetime"] >= 400
    assert result["learners"][DEFAULT_MODULE_ID]["num_critic_updates"] > 100
    assert np.isfinite(result["learners"][DEFAULT_MODULE_ID]["qf_loss"])

    env = make_env(cfg)
    obs_dim = env.observation_space.shape[0]
    obs = []
    o, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(100):
        obs.append(o)
        o, *_ = env.step(rng.uniform(-1, 1, size=(1,)).astype(np.float32))
    obs = np.asarray(obs, dtype=np.float32)
    assert obs.shape == (100, obs_dim)
    restored = RLModule.from_checkpoint(tmp_path / "module")
    for m in (module, restored):
        actions = deterministic_action(m, obs)
        assert actions.shape == (100, 1)
        assert np.all(np.isfinite(actions)) and np.all(np.abs(actions) <= 1.0)
    np.testing.assert_array_equal(deterministic_action(restored, obs), deterministic_action(module, obs))


@pytest.mark.parametrize("updates_per_step", [0.25, 1.0])
def test_rl_config_updates_per_step_sets_the_replay_ratio(ray_local, updates_per_step):
    """``rl.updates_per_step`` is the number of gradient updates per sampled env step, in RLlib and in SB3."""
    from raytrade.config import RLConfig
    from raytrade.rl.env import env_config, make_env
    from raytrade.rl.rllib_agents import algo_config
    from raytrade.rl.sb3_agents import sb3_model

    features, returns = trading_arrays(600)
    env_cfg = env_config(features=features, returns=returns, forecasts=None, window=4, cost_bps=10.0,
                         episode_length=200, random_start=True)
    cfg = RLConfig(agents=("td3",), train_batch_size=400, minibatch_size=32, learning_starts=80,
                   hidden=(16, 16), updates_per_step=updates_per_step)
    algo = algo_config("td3", cfg, env_cfg).build_algo()
    try:
        result = algo.train()
    finally:
        algo.stop()
    sampled = result["env_runners"]["num_env_steps_sampled_lifetime"]
    updates = result["learners"][DEFAULT_MODULE_ID]["num_critic_updates"]
    expected = (sampled - cfg.learning_starts) * updates_per_step
    assert sampled >= 400 and abs(updates - expected) <= 2 * 8, (sampled, updates, expected)

    model = sb3_model("td3", cfg, make_env(env_cfg))
    model.learn(total_timesteps=400)
    assert abs(model._n_updates - (400 - cfg.learning_starts) * updates_per_step) <= 4, model._n_updates
