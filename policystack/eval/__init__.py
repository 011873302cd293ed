"""Evaluation harness: roll a policy out in vectorised simulation envs and report success rates.

- ``metrics``: the Wilson score interval and per-task / overall summaries.
- ``expert``: the scripted expert as a pseudo-policy (``checkpoint=expert``).
- ``runner``: ``EvalRunner(task, episodes, n_envs, seed, ...).run(policy) -> EvalResult``.
- ``report``: ``eval_info.json``, episode videos and the PNG plot.
- ``compare``: a markdown table and a bar plot of several evaluations (``policystack compare``).
- ``commands``: ``policystack eval``.

Submodules are imported on use (importing this package loads neither torch nor mujoco).
"""
