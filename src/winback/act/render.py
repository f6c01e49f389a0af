"""Message templates: Jinja2, the packaged ones under ``act/templates`` unless ``templates_dir`` holds
one of the same name.

Per channel and template name (``reminder``, ``coupon``): ``email/<name>.subject.txt``,
``email/<name>.html`` (autoescaped: a product name cannot inject markup) and ``email/<name>.txt`` (the
plain-text part); ``sms/<name>.txt``; ``push/<name>.title.txt`` and ``push/<name>.txt``. Each sees the
message's payload: ``customer`` (``name``, ``user_id``), ``cart`` (``id``, ``items`` with ``product_id``,
``price``, ``quantity`` and whatever the shop added such as ``name``, ``url``; ``value``, ``currency``),
``recommendations`` (the same shape) and ``coupon`` (``code``, ``percent``, ``expires_at``; None without
one), plus ``message`` (``channel``, ``idempotency_key``). Undefined names are errors (the message fails
and says which), not blanks.

With tracking (a renderer given :class:`~winback.act.tracking.Links`, i.e. ``WINBACK_PUBLIC_URL`` set),
templates also see ``links`` (``open_pixel``, ``unsubscribe``, ``cart``: signed URLs of the service, or
None without tracking) and ``track(url)``, the click-tracked form of a URL (the URL itself without
tracking). An e-mail's unsubscribe URL also goes into its ``List-Unsubscribe`` header.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2

from winback.act.outbox import Message
from winback.act.tracking import Links, link_urls

__all__ = ["Rendered", "Renderer"]


@dataclass(frozen=True)
class Rendered:
    """A message ready for its channel."""

    text: str
    subject: str | None = None
    html: str | None = None
    title: str | None = None
    unsubscribe_url: str | None = None


def _money(value: Any, currency: str = "") -> str:
    try:
        amount = f"{float(value):,.2f}"
    except (TypeError, ValueError):
        return ""
    return f"{amount} {currency}".strip()


def _date(value: Any) -> str:
    try:
        return datetime.fromisoformat(str(value)).strftime("%Y-%m-%d")
    except ValueError:
        return str(value)


class Renderer:
    """Renders messages; templates are compiled once per renderer (one per worker thread)."""

    def __init__(self, templates_dir: Path | None = None, links: Links | None = None) -> None:
        self.links = links
        loaders: list[jinja2.BaseLoader] = []
        if templates_dir is not None:
            loaders.append(jinja2.FileSystemLoader(str(templates_dir)))
        loaders.append(jinja2.PackageLoader("winback.act", "templates"))
        self.env = jinja2.Environment(
            loader=jinja2.ChoiceLoader(loaders),
            autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False),
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
        )
        self.env.filters["money"] = _money
        self.env.filters["date"] = _date
        self._cache: dict[str, jinja2.Template] = {}

    def _template(self, name: str) -> jinja2.Template:
        template = self._cache.get(name)
        if template is None:
            template = self._cache[name] = self.env.get_template(name)
        return template

    def render(self, message: Message) -> Rendered:
        """The message's text (and subject and HTML for e-mail, title for push). Raises
        ``jinja2.TemplateError`` for a missing or broken template."""
        urls, track = link_urls(self.links, message.id, message.channel)
        context = {
            **message.payload,
            "message": {"channel": message.channel, "idempotency_key": message.idempotency_key},
            "links": urls,
            "track": track,
        }
        base = f"{message.channel}/{message.template}"
        if message.channel == "email":
            return Rendered(
                text=self._template(f"{base}.txt").render(context).strip() + "\n",
                subject=" ".join(self._template(f"{base}.subject.txt").render(context).split()),
                html=self._template(f"{base}.html").render(context),
                unsubscribe_url=urls["unsubscribe"],
            )
        if message.channel == "push":
            return Rendered(
                text=self._template(f"{base}.txt").render(context).strip(),
                title=" ".join(self._template(f"{base}.title.txt").render(context).split()),
            )
        return Rendered(text=" ".join(self._template(f"{base}.txt").render(context).split()))
