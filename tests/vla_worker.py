"""Subprocess side of tests/test_multiprocess.py: a VideoLLaMA (ViPRA debug) run with a held-out evaluation, as one
process of a multi-process job on localhost.

Usage: python tests/vla_worker.py DATA_ROOT TOKENIZER VQGAN WORKDIR --coordinator HOST:PORT --num_processes P
       --process_id I        (set XLA_FLAGS for the local device count first)
Prints "EVAL <json>" (this process's copy of the evaluation) and "DONE steps=N".
"""

import argparse
import json
import sys

from shared_assets import tiny_labeler

from configs import vipra
from latent_pretraining import train
from latent_pretraining.training import distributed


def main() -> None:
    p = argparse.ArgumentParser()
    for name in ("data", "tokenizer", "vqgan", "workdir"):
        p.add_argument(name)
    p.add_argument("--coordinator", required=True)
    p.add_argument("--num_processes", type=int, required=True)
    p.add_argument("--process_id", type=int, required=True)
    a = p.parse_args()
    c = vipra.get_config("debug")
    c.text.tokenizer, c.vision.tokenizer, c.data.root = a.tokenizer, a.vqgan, a.data
    c.data.shuffle_buffer, c.data.eval_batches = 16, 1
    c.train.total_steps, c.train.checkpoint.every = 2, 2
    c.train.checkpoint.async_save = False
    c.train.log.progress, c.train.log.tensorboard = "off", False
    d = c.train.distributed
    d.coordinator_address, d.num_processes, d.process_id, d.initialization_timeout = (
        a.coordinator, a.num_processes, a.process_id, 60)
    distributed.initialize(d)
    summary = train.train(c, a.workdir, overwrite=True, latent=tiny_labeler("vipra_tiny"))
    print("EVAL " + json.dumps(summary["eval"], sort_keys=True), flush=True)
    print(f"DONE steps={summary['steps']}", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
