"""`stratus host list`: the compute hosts of the catalog, UP or DOWN by their heartbeat (admin verb)."""

from __future__ import annotations

import typer

from stratus.cli.common import ConfigOpt, DataDirOpt, JsonOpt, admin_services, print_json, table

app = typer.Typer(help="Compute hosts (workers started with --host).", no_args_is_help=True)


@app.command("list")
def list_(data_dir: str = DataDirOpt, config: str = ConfigOpt, json_out: bool = JsonOpt) -> None:
    """List the compute hosts: state (DOWN once a heartbeat is a task lease late), instances, capacity."""
    from stratus.api.cvm.shapes import compute_host
    from stratus.service.hosts import list_hosts

    rows = [compute_host(h) for h in list_hosts(admin_services(data_dir, config))]
    if json_out:
        print_json(rows)
        return
    table(["HostName", "State", "Regions", "Compute", "Instances", "Capacity", "LastHeartbeat"],
          [[r["HostName"], r["HostState"], ",".join(r["Regions"]), r["ComputeDriver"] or "(region)",
            r["InstanceCount"], r["CapacityInstances"] or "-", r["LastHeartbeatTime"]] for r in rows])
