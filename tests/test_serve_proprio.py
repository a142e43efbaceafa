"""The effector state (proprio) through the policy server: a state-input policy gets the raw state from every request
encoding, refuses requests without it, other policies refuse it, and the closed-loop harness run through
serve + client gives exactly the in-process figures (the world's obs["state"] reaches the policy).

A fake policy stands in for a checkpoint: its metadata says `proprio_dim` 2 (as `Policy.metadata()` does for a
fine-tune with `model.proprio_dim=2`) and its action steers the effector from the state it is given, so a state
that did not arrive would change the rollouts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from policy import evaluate as ev
from policy.client import PolicyClient, PolicyServerError
from policy.serve import create_app

R, H = 64, 2


class StatePolicy:
    """Moves the effector toward the middle of the play area from the raw state it is given (demo world xy)."""

    def __init__(self, proprio_dim: int = 2):
        self.proprio_dim = proprio_dim
        self.seen: list[np.ndarray] = []

    def metadata(self) -> dict:
        meta = {"image_size": R, "history_offsets": [0], "action_dim": 7, "chunk": H, "recipe": "fake-state"}
        return {**meta, "proprio_dim": self.proprio_dim} if self.proprio_dim else meta

    def reset(self) -> None:
        pass

    def act(self, images: np.ndarray, instruction: str, *, seed: int = 0, proprio=None) -> np.ndarray:
        assert images.shape == (1, R, R, 3)
        if self.proprio_dim:
            assert proprio is not None and proprio.dtype == np.float32
            self.seen.append(np.array(proprio))
            xy = proprio[:2]
        else:
            assert proprio is None
            xy = np.zeros(2, np.float32)
        a = np.zeros((H, 7), np.float32)
        a[:, :2] = np.clip(0.5 * (0.5 - xy), -0.05, 0.05)  # the world's actions are small xy deltas
        return a


FRAMES = np.full((1, R, R, 3), 120, np.uint8)


@pytest.mark.parametrize("encoding", ["json", "npz", "png"])
def test_every_encoding_carries_the_state(encoding):
    policy = StatePolicy()
    with TestClient(create_app(policy, warmup=False)) as http:
        client = PolicyClient("http://testserver", http=http, retries=0)
        assert client.metadata()["proprio_dim"] == 2
        out = client.act(FRAMES, "touch the red block", encoding=encoding, proprio=np.array([0.45, 0.56]))
    np.testing.assert_array_equal(policy.seen[-1], np.array([0.45, 0.56], np.float32))
    np.testing.assert_allclose(out[:, :2], [[0.025, -0.03]] * H, rtol=1e-5)  # 0.5 * (0.5 - state), unclipped


def test_bad_or_missing_state_is_a_422_naming_proprio():
    with TestClient(create_app(StatePolicy(), warmup=False)) as http:
        client = PolicyClient("http://testserver", http=http, retries=0)
        for proprio, match in [(None, "missing field 'proprio'"), ([0.1], "proprio has 1 values"),
                               ([0.1] * 9, "proprio has 9 values")]:
            with pytest.raises(PolicyServerError) as info:
                client.act(FRAMES, "touch the red block", encoding="json",
                           proprio=None if proprio is None else np.array(proprio))
            assert info.value.status == 422 and info.value.field == "proprio" and match in str(info.value), proprio
        raw = json.dumps({"instruction": "x", "images": FRAMES.tolist()})[:-1] + ', "proprio": [0.1, NaN]}'
        r = http.post("/act", content=raw, headers={"content-type": "application/json"})  # json.loads reads NaN
        assert r.status_code == 422 and "non-finite" in r.json()["error"], r.json()
        for body in ({"proprio": "0.1,0.2"}, {"proprio": [True, False]}):  # not a list of numbers
            r = http.post("/act", json={"instruction": "x", "images": FRAMES.tolist(), **body})
            assert r.status_code == 422 and r.json()["field"] == "proprio", r.json()
        r = http.post("/act", data={"instruction": "x", "proprio": "[0.1, oops]"},
                      files={"image0": ("a.png", _png(FRAMES[0]), "image/png")})
        assert r.status_code == 422 and "not a JSON list" in r.json()["error"]
        r = http.post("/act", data={"instruction": "x", "proprio": json.dumps([0.3, 0.4, 0.0])},
                      files={"image0": ("a.png", _png(FRAMES[0]), "image/png")})  # 3 values: P <= p <= 8
        assert r.status_code == 200, r.json()


def test_a_policy_without_state_input_refuses_it():
    with TestClient(create_app(StatePolicy(proprio_dim=0), warmup=False)) as http:
        client = PolicyClient("http://testserver", http=http, retries=0)
        assert "proprio_dim" not in client.metadata()
        client.act(FRAMES, "touch the red block")  # works without
        with pytest.raises(PolicyServerError) as info:
            client.act(FRAMES, "touch the red block", proprio=np.array([0.1, 0.2]))
        assert info.value.status == 422 and info.value.field == "proprio"


def test_closed_loop_through_the_server_equals_in_process():
    """policy.evaluate passes the world's raw obs["state"]; through serve + client the rollouts are identical."""
    local_policy, remote_policy = StatePolicy(), StatePolicy()
    local = ev.evaluate(local_policy, episodes=2, seed=1000, max_steps=6, progress=False)
    with TestClient(create_app(remote_policy, warmup=False)) as http:
        remote = ev.evaluate(PolicyClient("http://testserver", http=http), episodes=2, seed=1000, max_steps=6,
                             progress=False)
    keys = ("seed", "family", "success", "progress", "steps", "queries")
    assert [{k: r[k] for k in keys} for r in remote["records"]] == [{k: r[k] for k in keys} for r in local["records"]]
    assert len(remote_policy.seen) == len(local_policy.seen) == remote["queries"] > 0
    np.testing.assert_array_equal(np.stack(remote_policy.seen), np.stack(local_policy.seen))
    assert len({tuple(s) for s in local_policy.seen}) > 2  # the state changed along the rollouts


def _png(frame: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()
