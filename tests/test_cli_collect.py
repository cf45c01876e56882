import json

import numpy as np
import pytest

from rssm_tf.cli import main
from rssm_tf.collect import collect
from rssm_tf.data import EpisodeStore, load_episode


def test_collect_discrete_and_continuous(tmp_path):
    paths = collect("CartPole-v1", 3, tmp_path / "cart", seed=1)
    assert len(paths) == 3
    ep = load_episode(paths[0])
    assert ep["obs"].shape[1] == 4 and ep["action"].shape[1] == 2
    np.testing.assert_array_equal(ep["action"][0], [0, 0])            # no action at t=0
    np.testing.assert_array_equal(ep["action"][1:].sum(-1), 1.0)       # one-hot
    assert ep["is_first"][0] == 1 and ep["is_first"][1:].sum() == 0
    assert ep["reward"][0] == 0 and np.all(ep["reward"][1:] == 1.0)
    assert ep["is_terminal"][-1] == 1.0 or len(ep["obs"]) == 501       # fell over or time limit
    pend = load_episode(collect("Pendulum-v1", 1, tmp_path / "pend", max_steps=30)[0])
    assert pend["obs"].shape == (30, 3) and pend["action"].shape == (30, 1)
    assert np.all(np.abs(pend["action"]) <= 2.0) and pend["is_terminal"].sum() == 0


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(env_id="NoSuchEnv-v0", episodes=1), ValueError, "env_id 'NoSuchEnv-v0'"),
    (dict(env_id="CartPole-v1", episodes=0), ValueError, "episodes must be a positive"),
    (dict(env_id="CartPole-v1", episodes=1, max_steps=0), ValueError, "max_steps"),
])
def test_collect_errors(tmp_path, kwargs, error, words):
    with pytest.raises(error, match=words):
        collect(directory=tmp_path, **kwargs)
    assert len(EpisodeStore(tmp_path)) == 0


def test_cli_collect_train_evaluate_imagine(tmp_path, capsys):
    data, test, model = tmp_path / "train", tmp_path / "test", tmp_path / "run" / "m.keras"
    assert main(["collect", "--env", "Pendulum-v1", "--episodes", "2", "--out", str(data),
                 "--max-steps", "40"]) == 0
    assert main(["collect", "--env", "Pendulum-v1", "--episodes", "1", "--out", str(test),
                 "--seed", "50", "--max-steps", "40"]) == 0
    small = json.dumps(dict(deterministic_size=16, n_categories=4, n_classes=4,
                            hidden_size=16, n_blocks=2))
    assert main(["train", "--data", str(data), "--model", str(model), "--steps", "4",
                 "--batch-size", "2", "--seq-len", "8", "--config", small,
                 "--val-data", str(test), "--log-dir", str(tmp_path / "logs")]) == 0
    assert model.is_file() and list((tmp_path / "logs").rglob("events.out.tfevents.*"))
    assert main(["train", "--data", str(data), "--model", str(model), "--steps", "2",
                 "--batch-size", "2", "--seq-len", "8"]) == 0
    assert "resuming from" in capsys.readouterr().out
    assert main(["evaluate", "--model", str(model), "--data", str(test),
                 "--json", str(tmp_path / "eval.json")]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert len(result["obs_mse"]) == 15 and result["windows"] == 2
    assert main(["imagine", "--model", str(model), "--data", str(test),
                 "--out", str(tmp_path / "dream.png")]) == 0
    assert (tmp_path / "dream.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["evaluate", "--model", str(tmp_path / "none.keras"), "--data", str(test)]) == 2
    assert "no such model file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--data", str(data)])  # --model is required: argparse exits


def test_collect_renders_frames_for_pixel_cartpole(tmp_path):
    paths = collect("CartPole-v1", 2, tmp_path / "pix", seed=3, image_size=(32, 48))
    ep = load_episode(paths[0])
    assert ep["image"].dtype == np.uint8 and ep["image"].shape == (len(ep["obs"]), 32, 48, 3)
    frames = ep["image"].astype(int)
    assert frames.max() == 255 and frames.min() < 100       # white background, dark cart
    assert np.abs(frames[1:] - frames[:-1]).sum() > 0        # the scene moves
    with pytest.raises(ValueError, match="image_size must be"):
        collect("CartPole-v1", 1, tmp_path / "bad", image_size=(32, 0))


def test_collect_crops_the_rendered_frame_before_resizing(tmp_path):
    import gymnasium as gym

    from rssm_tf.collect import crop_image, resize_image

    crop = (140, 332, 156, 444)
    ep = load_episode(collect("CartPole-v1", 1, tmp_path / "crop", seed=5,
                              image_size=(32, 48), image_crop=crop)[0])
    env = gym.make("CartPole-v1", render_mode="rgb_array")
    env.reset(seed=5)
    frame = env.render()
    env.close()
    assert frame.shape == (400, 600, 3)
    # the first frame is the render's rows 140:332 and columns 156:444, each output
    # pixel the mean of a 6x6 block (area resize by an integer factor)
    blocks = frame[140:332, 156:444].astype(float).reshape(32, 6, 48, 6, 3).mean((1, 3))
    np.testing.assert_array_equal(ep["image"][0], np.clip(np.round(blocks), 0, 255))
    np.testing.assert_array_equal(
        resize_image(crop_image(frame, crop), (32, 48)), ep["image"][0])
    # the pole stands inside the crop: dark pixels in the frame's upper half
    assert ep["image"][0][:16].min() < 200


@pytest.mark.parametrize("crop, words", [
    ((0, 10, 5), "image_crop must be"), ((10, 5, 0, 10), "image_crop must be"),
    ((0, 10, 0, -1), "image_crop must be"), ("top", "image_crop must be"),
    ((0, 401, 0, 10), r"reaches outside the frame of shape \(400, 600, 3\)"),
])
def test_bad_crops_are_named_before_anything_is_written(tmp_path, crop, words):
    with pytest.raises(ValueError, match=words):
        collect("CartPole-v1", 1, tmp_path, image_size=(32, 48), image_crop=crop)
    assert len(EpisodeStore(tmp_path)) == 0


def test_rendering_selects_sdl_dummy_video_unless_set(tmp_path, monkeypatch):
    # without a display SDL would print "XDG_RUNTIME_DIR is invalid" while probing
    import os

    monkeypatch.delenv("SDL_VIDEODRIVER", raising=False)
    collect("CartPole-v1", 1, tmp_path / "a", max_steps=2)
    assert "SDL_VIDEODRIVER" not in os.environ          # no frames, nothing set
    collect("CartPole-v1", 1, tmp_path / "b", max_steps=2, image_size=16)
    assert os.environ["SDL_VIDEODRIVER"] == "dummy"
    monkeypatch.setenv("SDL_VIDEODRIVER", "x11")
    from rssm_tf.collect import make_env

    make_env("CartPole-v1", image_size=16)[0].close()
    assert os.environ["SDL_VIDEODRIVER"] == "x11"       # the user's choice is kept


def test_cli_trains_and_evaluates_a_pixel_model(tmp_path, capsys):
    data, model = tmp_path / "pix", tmp_path / "run" / "m.keras"
    assert main(["collect", "--env", "CartPole-v1", "--episodes", "2", "--out", str(data),
                 "--image-size", "16"]) == 0
    small = json.dumps(dict(deterministic_size=16, n_categories=4, n_classes=4,
                            hidden_size=16, n_blocks=2, cnn_depth=4))
    assert main(["train", "--data", str(data), "--model", str(model), "--steps", "2",
                 "--batch-size", "2", "--seq-len", "6", "--config", small,
                 "--obs-keys", "image"]) == 0
    assert main(["evaluate", "--model", str(model), "--data", str(data), "--context", "2",
                 "--horizon", "3"]) == 0
    out = capsys.readouterr().out
    assert "image_mse" in out and "obs_mse" not in out


def test_collect_shows_progress_with_keras_progbar(tmp_path, capsys):
    collect("CartPole-v1", 3, tmp_path / "bar", seed=2, progress=True)
    out = capsys.readouterr().out
    assert "3/3" in out and "steps:" in out  # Progbar's count and its running value


def test_cli_version_config_file_and_missing_extras(tmp_path, capsys, monkeypatch):
    from importlib import metadata

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"rssm-tf {metadata.version('rssm-tf')}"
    data = tmp_path / "data"
    collect("Pendulum-v1", 2, data, max_steps=20)
    config = tmp_path / "small.json"
    config.write_text(json.dumps(dict(deterministic_size=16, n_categories=4, n_classes=4,
                                      hidden_size=16, n_blocks=2)))
    model = tmp_path / "m.keras"
    assert main(["train", "--data", str(data), "--model", str(model), "--steps", "2",
                 "--batch-size", "2", "--seq-len", "8", "--config", str(config)]) == 0
    from rssm_tf import load_world_model

    assert load_world_model(model).config.deterministic_size == 16
    capsys.readouterr()
    for bad, words in ((str(tmp_path / "nope.json"), "no such file"),
                       ("{not json", "not valid JSON"), ("[1, 2]", "must be a JSON object")):
        (tmp_path / "x.keras").unlink(missing_ok=True)
        assert main(["train", "--data", str(data), "--model", str(tmp_path / "x.keras"),
                     "--config", bad]) == 2
        assert words in capsys.readouterr().err
    import rssm_tf.collect

    def without_gymnasium(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'gymnasium'", name="gymnasium")

    monkeypatch.setattr(rssm_tf.collect, "collect", without_gymnasium)
    assert main(["collect", "--env", "CartPole-v1", "--episodes", "1", "--out",
                 str(tmp_path / "c")]) == 2
    assert 'needs gymnasium: pip install "rssm-tf[examples]"' in capsys.readouterr().err


def test_cli_export_and_serve_subcommands(exported, model_path, tmp_path, capsys):
    out = tmp_path / "cli-export"
    assert main(["export", "--model", str(model_path), "--out", str(out), "--no-onnx",
                 "--no-parity", "--name", "wm"]) == 0
    assert (out / "saved_model" / "wm" / "1" / "saved_model.pb").is_file()
    assert json.loads((out / "manifest.json").read_text())["name"] == "wm"
    served, _ = exported
    capsys.readouterr()
    assert main(["serve", "--export", str(served), "--backend", "onnx", "--steps", "2"]) == 0
    assert "observing 2 steps" in capsys.readouterr().out
    assert main(["export", "--model", str(tmp_path / "missing.keras"), "--out",
                 str(out)]) == 2
    assert "no such model file" in capsys.readouterr().err
