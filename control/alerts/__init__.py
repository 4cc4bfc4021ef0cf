"""Alert settings, webhook endpoints and the delivery log; the worker that delivers raised alerts as signed webhooks and bus events, and the sweep for commit at risk of idle customers."""
