"""dataset.val_fraction: a validation split held out of the training rows, for tuning."""

import numpy as np

from bnn_bench.data import load_dataset


def rows(x):
    return {r.tobytes() for r in np.asarray(x)}


def test_val_fraction_holds_training_rows_out_in_place_of_the_test_set():
    full = load_dataset("digits")
    held = load_dataset("digits", val_fraction=0.25)
    n_val = round(0.25 * full.n_train)
    assert len(held.y_test) == n_val and held.n_train == full.n_train - n_val
    train, val, test = rows(held.x_train), rows(held.x_test), rows(full.x_test)
    assert val <= rows(full.x_train) and train <= rows(full.x_train)
    assert not (val & train) and not (val & test)  # the test set is never seen
    again = load_dataset("digits", val_fraction=0.25, seed=3)  # fixed split, whatever the seed
    np.testing.assert_array_equal(again.x_test, held.x_test)


def test_bad_val_fraction_is_one_line_exit_2(run_cli, tmp_path):
    proc = run_cli("dataset.val_fraction=1.0", "logger=none", f"hydra.run.dir={tmp_path / 'r'}")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "dataset.val_fraction=1.0" in lines[0], proc.stderr
