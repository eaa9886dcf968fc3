"""Scheduling: delayed tasks (timers the ticker dispatches) and cron schedules."""
