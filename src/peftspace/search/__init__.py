"""Progressive design-space search (Chen et al. 2023): idempotent stages over a resumable trial store.

    spec.py       what a search is (SearchSpec: model, task, budget, stages, trial and final settings)
    refine.py     the stage walk: sample, run, collect, analyze; stored decisions; the discovered design
    trial.py      run_trial(row): one trial, a pure function of its stored row
    execute.py    backends: local (sequential), spawned worker processes, Ray
    final.py      the discovered design at full fidelity beside baselines (train_cli.compare)
    runner.py     run_search(): all of it, then the report
    progress.py   live progress (stage, candidate, trial i/n, best so far, ETA)
    store.py      the SQLite trial store;  stats.py  EDFs, summaries, bootstrap CIs
    cli.py        `peftspace search`, `peftspace trials`, `peftspace report`
See docs/search.md.
"""
