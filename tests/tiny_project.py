"""The conf/local that tests running the real ``kedro`` CLI put in their copy of the project."""

#: conf/local of the test project: the embedded task at toy sizes
TINY = """\
source_pretraining: {data: {n_per_class: 6}, training: {epochs: 1, batch_size: 64}}
data: {split: {train_per_class: 4, val_per_class: 4}}
search: {population: 4, elite: 1, generations: 1, seeds: [1], worker_poll_s: 0.2, worker_idle_timeout_s: 5}
training: {epochs: 1, batch_size: 32}
retrain: {seeds: [559]}
compare: {methods: [full_finetune, l2_sp, random_search], surgical: {blocks: [layer4]}, resamplings: 2}  # all ten: test_compare.py
"""
