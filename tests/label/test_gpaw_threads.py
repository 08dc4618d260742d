"""GPAW's BLAS threads are limited for the whole calculation, scipy's LAPACK (loaded lazily by GPAW) included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent(
    """
    import json, sys
    from aloe.label.gpaw import _blas_threads

    before = "scipy.linalg" in sys.modules
    with _blas_threads(1):
        import scipy.linalg  # GPAW's eigensolver imports it during the first SCF step
        from threadpoolctl import threadpool_info

        threads = {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
    print(json.dumps({"scipy_before": before, "threads": threads}))
    """
)


def test_scipy_lapack_loaded_during_a_calculation_runs_single_threaded():
    # A fresh process, as a label child is; OpenBLAS would start 4 threads per library by default.
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "4"}
    env.pop("OMP_NUM_THREADS", None)
    out = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert not result["scipy_before"]  # otherwise this test would not see a lazily loaded library
    scipy_libs = [path for path in result["threads"] if "scipy.libs" in path or "scipy_openblas-" in path]
    assert scipy_libs, result  # scipy's own OpenBLAS is among them
    assert set(result["threads"].values()) == {1}, result
