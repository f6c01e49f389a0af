"""Measurement: what winback's messages truly changed (holdout experiments), the shop's KPIs over time,
model health, demand signals, and the HTML report that shows them."""
