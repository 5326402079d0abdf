"""Train a small torch DQN on CartPole-v1 with checkpoints; kill it and run it again to resume.

    python examples/gym_resume.py --dir runs/gym_resume --steps 8000
    # kill it (Ctrl-C, SIGKILL, a preempted node...), then run the same command again:
    # it continues from the latest checkpoint and ends exactly as an uninterrupted run.

Run it once more after it finished and it returns the stored result without training;
`--fresh` deletes the checkpoints and starts over.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import gymnasium as gym
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `agents` when run from anywhere

from agents import DQNAgent

from integrations.gym import CkptRunnerHook, RunnerCallback, RunnerConfig, RunResult, run


class PrintEvents(RunnerCallback):
    """One line when the run starts or resumes, per checkpoint, and at the end."""

    def on_start(self, hook: CkptRunnerHook) -> None:
        if hook.was_complete:
            print(f"run already complete at step {hook.resumed_from}: returning its stored result")
        elif hook.resumed_from is not None:
            print(
                f"resumed from step {hook.resumed_from} "
                f"(timesteps {hook.timesteps}, {hook.episodes} episodes)"
            )
        else:
            print(f"fresh start: {hook.config.total_timesteps} timesteps")
        sys.stdout.flush()

    def on_checkpoint(self, hook: CkptRunnerHook, step: int) -> None:
        print(
            f"saved checkpoint step {step}: timesteps {hook.timesteps}, episodes {hook.episodes}, "
            f"mean return (last 20) {hook.mean_return(20):.1f}",
            flush=True,
        )

    def on_end(self, hook: CkptRunnerHook, result: RunResult) -> None:
        print(
            f"done: {result.timesteps} timesteps, {result.episodes} episodes, "
            f"mean return (last 20) {hook.mean_return(20):.1f}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> RunResult:
    """Parse arguments and run (or resume) the training."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="runs/gym_resume", help="checkpoint directory")
    parser.add_argument("--steps", type=int, default=8_000, help="total env timesteps")
    parser.add_argument("--interval", type=int, default=1_000, help="timesteps per checkpoint")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fresh", action="store_true", help="delete old checkpoints first")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a 64-unit MLP: extra threads cost more than they bring

    env = gym.make("CartPole-v1")
    agent = DQNAgent(env.observation_space, env.action_space, hidden=64, seed=args.seed)
    config = RunnerConfig(
        total_timesteps=args.steps,
        checkpoint_dir=args.dir,
        checkpoint_interval=args.interval,
        max_checkpoints=3,
        keep_period=5 * args.interval,
        best_metric="episode_return",
        metric_window=20,
        resume=not args.fresh,
        overwrite=args.fresh,
        seed=args.seed,
        # `kill PID`: checkpoint at the next episode end, then `run` returns (preempted=True).
        save_on_signals=(signal.SIGTERM,),
    )
    result = run(env, agent, config, callbacks=[PrintEvents()])
    if result.preempted:
        print(f"preempted at timestep {result.timesteps}: saved; run again to resume", flush=True)
    return result


if __name__ == "__main__":
    main()
