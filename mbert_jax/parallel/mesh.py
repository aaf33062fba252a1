"""The device mesh and multi-host start-up.

A mesh is built from the config's `mesh` block: named axes (`data`, `fsdp`,
`tensor`) with sizes, one of which may be -1 to take the remaining devices.
Axes are `Auto` (GSPMD propagation from the logical constraints the models
carry), which is what the logical-rule style of t5x / maxtext expects.
"""

from __future__ import annotations

import logging
import math
import os

import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "fsdp", "tensor")

log = logging.getLogger(__name__)


def default_mesh_config() -> ml_collections.ConfigDict:
    """`data: -1` (all devices data-parallel), `fsdp: 1`, `tensor: 1`."""
    return ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, ...]:
    """Resolve the -1 entry of the mesh config against `num_devices`.

    Raises:
      ValueError: naming the mesh field when the sizes cannot cover the devices.
    """
    sizes = {axis: int(mesh_config.get(axis, 1)) for axis in MESH_AXES}
    unknown = set(dict(mesh_config)) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"config.mesh has unknown axes {sorted(unknown)}; valid: {MESH_AXES}")
    free = [a for a, s in sizes.items() if s == -1]
    if len(free) > 1:
        raise ValueError(f"config.mesh: at most one axis may be -1, got {free}")
    for axis, size in sizes.items():
        if size == 0 or size < -1:
            raise ValueError(f"config.mesh.{axis}={size}: sizes are positive or -1")
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if free:
        if num_devices % fixed:
            raise ValueError(
                f"config.mesh: the fixed axes multiply to {fixed}, which does not divide the "
                f"{num_devices} devices; change config.mesh"
            )
        sizes[free[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise ValueError(
            f"config.mesh {dict(sizes)} has {fixed} devices but {num_devices} are available; "
            "set one axis to -1 to take the rest"
        )
    return tuple(sizes[a] for a in MESH_AXES)


def make_mesh(mesh_config=None, devices=None) -> Mesh:
    """A `Mesh` over `devices` (default: all) with axes `MESH_AXES`."""
    auto = (AxisType.Auto,) * len(MESH_AXES)
    if devices is None:
        shape = mesh_shape(mesh_config or default_mesh_config(), jax.device_count())
        return jax.make_mesh(shape, MESH_AXES, axis_types=auto)
    shape = mesh_shape(mesh_config or default_mesh_config(), len(devices))
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=auto)


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """`jax.distributed.initialize` from flags or the usual environment variables.

    Explicit arguments win; otherwise `JAX_COORDINATOR_ADDRESS`,
    `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` are read; on a TPU pod or a
    SLURM / Open MPI cluster, where JAX detects everything itself, calling it
    with no arguments is enough. A single process with nothing set does
    nothing.
    """
    env = os.environ
    coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and "JAX_NUM_PROCESSES" in env:
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and "JAX_PROCESS_ID" in env:
        process_id = int(env["JAX_PROCESS_ID"])
    cluster = any(k in env for k in ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_ID"))
    if coordinator_address is None and not cluster:
        return
    kwargs = {}
    if coordinator_address is not None:
        kwargs = dict(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
        )
    # Collectives between CPU processes (tests, laptops) go through gloo; the
    # setting only concerns the CPU backend.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    log.info(
        "distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
