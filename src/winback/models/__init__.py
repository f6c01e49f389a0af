"""Models that follow scikit-learn's estimator contract: abandonment, churn, CLV, segments, warnings."""
