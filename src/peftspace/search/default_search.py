"""The search a bare `peftspace search` runs, as YAML text (kept in a module so every install carries it).

`peftspace search --print-config` prints it merged with your file, overrides and flags.
"""

DEFAULT_SEARCH = """\
# What a bare `peftspace search` runs: a small but real refinement (Chen et al. 2023) of MiniLM on
# vader-movie at 0.5% of the backbone, sized to finish in under 20 minutes on 2 CPU cores.
# Every key can be overridden by a search file (--config FILE), a dotted override (--set trial.steps=40)
# or a flag (--samples, --steps, ...). See docs/search.md.
model: minilm
task: vader-movie
budget: 0.5%
space: S0
samples: 2            # designs per candidate (the same N and seeds for every candidate of a stage)
seed: 0
trial:                # low fidelity: the design is the variable, all of this is fixed
  steps: 40           # measured: at 24 steps some seeds have not taken off yet (dev acc 0.48), at 40 all do
  batch_size: 16
  lr: 5.0e-3          # measured: in 40 steps 1e-3 barely moves MiniLM (dev acc ~0.57), 5e-3 reaches ~0.8
  max_length: 48
  dev_examples: 200   # trials are scored on the first 200 dev examples
  test_examples: 32   # train() always evaluates test; trials keep it small and never use it
# The paper's four stages from S0. Strategy assignment (stage 4) is one stage here: each candidate
# assigns one strategy set to every group at once (A, P, B or L everywhere, or the paper's discovered
# T5 assignment), instead of the paper's group-by-group search over all 15 subsets (4 x 15 candidates:
# hours, not minutes). `stages: paper` in a search file runs the paper's lists.
stages:
  - stage1-grouping
  - stage2-allocation
  - stage3-tunable
  - name: stage4-strategies
    component: strategies
    description: strategy assignment of all groups at once (stage 4, condensed)
    candidates:
      - strategies=G1:A/G2:A/G3:A/G4:A
      - strategies=G1:P/G2:P/G3:P/G4:P
      - strategies=G1:B/G2:B/G3:B/G4:B
      - strategies=G1:L/G2:L/G3:L/G4:L
      - strategies=G1:A+L/G2:A+P/G3:A+P+B/G4:P+B+L
final:                # full fidelity: the discovered design beside baselines at the same budget
  methods: [lora, mam, bitfit]
  steps: 60           # 1,920 examples (~0.24 epoch) at batch 32; full dev and test sets (1,007 each)
  batch_size: 32
  max_length: 48
  seeds: 1
  lr: 5.0e-3          # every method the trials' lr: the presets' defaults suit 3 epochs, not 60 steps
"""
