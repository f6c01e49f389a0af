"""Recommendations: candidate sources (co-occurrence neighbours, association rules, content, popularity)
and the ranker that blends them per use (cart, winback, similar)."""
