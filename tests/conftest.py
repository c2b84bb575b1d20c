import os

import pytest
import torch

# the suite must run on 2 CPU cores; keep torch from oversubscribing them
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A trained run on a small synthderm (shared by tests that need a trained FP model)."""
    from fqopt.runs import Run
    from fqopt.training import TrainConfig, train

    path = tmp_path_factory.mktemp("runs") / "tiny"
    run = Run.create(path, dataset="synthderm", dataset_options={"n": 900, "image_size": 24},
                     model="test_resnet", seed=0)
    train(run, TrainConfig(epochs=3, batch_size=64, seed=0))
    return run
