"""Your team's task types: every module in this package is loaded by submit_task and process_task.

Add a module here, declare handlers with `@task_type` (see the README, "Writing a
task type"), and `make dev` serves them after a restart; `make package` puts this
package in every deploy bundle. Set `AIA_TASK_MODULES` to load other modules
instead. A module that fails to import stops the functions from starting.
"""
