"""The runner behind ./run_experiments.sh. Never imports torch (tests/test_runner_core.py checks it).

    stages.py   plans/<stage>.toml -> StageSpec (the built-in stages as data)
    plan.py     make_plan(spec, Options, Node) -> Plan of Run; place() packs runs on GPUs; launch_argv()
    launch.py   Stage: decide, claim (.runner.lock), launch, follow, time limits, Ctrl-C, summaries, cost
    runinfo.py  summary.json / experiment.json reading and writing, the final table
    cli.py      the command line, --help, option checks
    preflight.py  ./run_experiments.sh preflight STAGE
"""
