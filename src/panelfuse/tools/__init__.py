"""Tools the panel (and optionally the judge) may call: web_search, web_fetch, and the loop that runs them.

Data flows one way: the pipeline uses these modules; nothing here knows about fusion runs.
"""
