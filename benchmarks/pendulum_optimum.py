"""The best return Pendulum-v1 allows from given starts: a yardstick for the agent.

    python benchmarks/pendulum_optimum.py [--seeds 10000000 10000] [--episodes 10]

Pendulum's return depends on where an episode starts: hanging down, the swing-up alone
costs a couple of hundred; near the top, almost nothing. So "-200 over 10 episodes"
means more or less on different seeds. This script solves the environment's own
dynamics (gymnasium's ``Pendulum-v1``: g = 10, dt = 0.05, torque in [-2, 2], speed in
[-8, 8], 200 steps) by finite-horizon dynamic programming on a grid of angle x
speed x torque (bilinear interpolation of the value between grid points), then plays
the greedy policy of that value in the real environment on the seeds ``seed``,
``seed + 1``, ... for each first seed of ``--seeds`` (by default the agent's evaluation
seeds, ``rssm_tf.agent.eval_seed(0)``, and ``examples/plan.py``'s, where the agent's
and the planner's returns are also reported).
The grid's interpolation makes it a near-optimal controller, not an exact bound.

Writes ``benchmarks/results/pendulum_optimum.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import markdown_table, write_results  # noqa: E402

GRAVITY, DT, MAX_TORQUE, MAX_SPEED, STEPS = 10.0, 0.05, 2.0, 8.0, 200


def wrap(theta: np.ndarray) -> np.ndarray:
    """Angle in [-pi, pi) (0 is upright)."""
    return (theta + np.pi) % (2 * np.pi) - np.pi


def step(theta: np.ndarray, speed: np.ndarray, torque: np.ndarray
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pendulum-v1's dynamics and cost (m = l = 1): next angle, next speed, cost."""
    cost = wrap(theta) ** 2 + 0.1 * speed ** 2 + 0.001 * torque ** 2
    speed = np.clip(speed + (1.5 * GRAVITY * np.sin(theta) + 3.0 * torque) * DT,
                    -MAX_SPEED, MAX_SPEED)
    return theta + speed * DT, speed, cost


class Grid:
    """Values of the remaining-steps costs on an angle x speed grid."""

    def __init__(self, angles: int = 361, speeds: int = 321, torques: int = 41) -> None:
        self.angles, self.speeds = angles, speeds
        self.torques = np.linspace(-MAX_TORQUE, MAX_TORQUE, torques)
        theta, speed, torque = np.meshgrid(np.linspace(-np.pi, np.pi, angles),
                                           np.linspace(-MAX_SPEED, MAX_SPEED, speeds),
                                           self.torques, indexing="ij")
        nxt_theta, nxt_speed, self.cost = step(theta, speed, torque)
        self.where = self.locate(nxt_theta, nxt_speed)
        self.values = [np.zeros((angles, speeds))]  # values[k]: k steps to go

    def locate(self, theta: np.ndarray, speed: np.ndarray) -> tuple:
        """Grid cell and bilinear weights of each (angle, speed)."""
        a = (wrap(theta) + np.pi) / (2 * np.pi) * (self.angles - 1)
        s = (speed + MAX_SPEED) / (2 * MAX_SPEED) * (self.speeds - 1)
        i = np.clip(np.floor(a).astype(int), 0, self.angles - 2)
        j = np.clip(np.floor(s).astype(int), 0, self.speeds - 2)
        return i, j, a - i, s - j

    @staticmethod
    def interpolate(value: np.ndarray, where: tuple) -> np.ndarray:
        i, j, x, y = where
        return ((1 - x) * (1 - y) * value[i, j] + x * (1 - y) * value[i + 1, j]
                + (1 - x) * y * value[i, j + 1] + x * y * value[i + 1, j + 1])

    def solve(self, steps: int = STEPS) -> None:
        for _ in range(steps):
            self.values.append((self.cost + self.interpolate(self.values[-1],
                                                             self.where)).min(-1))

    def torque(self, theta: float, speed: float, to_go: int, choices: np.ndarray
               ) -> float:
        """The choice of torque that minimises cost + value with ``to_go - 1`` left."""
        nxt_theta, nxt_speed, cost = step(np.full_like(choices, theta),
                                          np.full_like(choices, speed), choices)
        total = cost + self.interpolate(self.values[to_go - 1],
                                        self.locate(nxt_theta, nxt_speed))
        return float(choices[np.argmin(total)])


def play(grid: Grid, seed: int) -> tuple[float, float, float]:
    """The greedy policy's return in the real environment from ``reset(seed=seed)``;
    also the start's angle and speed."""
    import gymnasium as gym

    env = gym.make("Pendulum-v1")
    try:
        env.reset(seed=seed)
        start_theta, start_speed = (float(x) for x in env.unwrapped.state)
        choices, total = np.linspace(-MAX_TORQUE, MAX_TORQUE, 401), 0.0
        for t in range(STEPS):
            theta, speed = env.unwrapped.state
            action = grid.torque(theta, speed, STEPS - t, choices)
            _, reward, *_ = env.step(np.array([action], np.float32))
            total += float(reward)
    finally:
        env.close()
    return total, float(wrap(np.array(start_theta))), start_speed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[10_000_000, 10_000],
                        help="first seed of each set (default: the agent's evaluation "
                             "seeds and examples/plan.py's)")
    parser.add_argument("--episodes", type=int, default=10)
    args = parser.parse_args()
    began = time.perf_counter()
    grid = Grid()
    grid.solve()
    rows, sets = [], {}
    for first in args.seeds:
        episodes = []
        for seed in range(first, first + args.episodes):
            total, theta, speed = play(grid, seed)
            episodes.append({"seed": seed, "start_angle": theta, "start_speed": speed,
                             "return": total})
            rows.append([seed, f"{theta:+.2f}", f"{speed:+.2f}", f"{total:.1f}"])
        returns = [e["return"] for e in episodes]
        sets[first] = {"episodes": episodes, "mean_return": float(np.mean(returns)),
                       "std_return": float(np.std(returns))}
        rows.append([f"seeds {first}..{first + args.episodes - 1}", "", "",
                     f"mean {np.mean(returns):.1f} +- {np.std(returns):.1f}"])
        print(f"seeds from {first}: mean {np.mean(returns):.1f} +- {np.std(returns):.1f}")
    report = {"command": "python benchmarks/pendulum_optimum.py " + " ".join(sys.argv[1:]),
              "seed_sets": sets, "grid": {"angles": grid.angles, "speeds": grid.speeds,
                       "torques": len(grid.torques)},
              "seconds": round(time.perf_counter() - began, 1)}
    write_results("pendulum_optimum", "Pendulum-v1: near-optimal returns from the "
                  "evaluation starts", report,
                  markdown_table(["seed", "start angle (0 = up)", "start speed",
                                  "return"], rows),
                  "Dynamic programming on Pendulum-v1's own dynamics (angle x speed x "
                  f"torque grid {grid.angles} x {grid.speeds} x {len(grid.torques)}, 200 "
                  "steps), its greedy policy played in gymnasium's environment. Starts "
                  "hanging down (|angle| near pi) cost ~230 at best.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
