"""Transform: one export line -> one row of Mixpanel's tables, its dedup key and its identity links;
and identity resolution over the links that exports stored. Imports nothing above `windows`."""
