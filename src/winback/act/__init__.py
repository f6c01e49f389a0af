"""Acting on decisions: the durable outbox (:mod:`winback.act.outbox`), the channels that send
(:mod:`winback.act.channels`: SMTP e-mail, signed webhooks for SMS and push), the message templates
(:mod:`winback.act.render`) and the worker that claims, re-checks, renders, sends and records
(:mod:`winback.act.worker`)."""

from winback.act.outbox import Contact, Scheduled, schedule

__all__ = ["Contact", "Scheduled", "schedule"]
