"""`vidseg train`: one command per learned part. Each task's trainers are a module here
(vos, gates, predict, semseg); what every trainer does with its run folder is run_folder.py."""

import typer

from vidseg_cli.cli.train import gates, predict, semseg, vos

train_app = typer.Typer(help="Train the learned parts of vidseg.", no_args_is_help=True)
# The order here is the order `vidseg train --help` lists them in.
train_app.command("vos")(vos.train_vos_command)
train_app.command("gates")(gates.train_gates_command)
train_app.command("predict")(predict.train_predict_command)
train_app.command("semseg")(semseg.train_semseg_command)
train_app.command("calibrate")(vos.train_calibrate_command)
