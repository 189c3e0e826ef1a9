"""Prices from a SQL database (GQL_DATABASE_URL): PostgreSQL, or MariaDB/MySQL.

- `tables.py`: the tables (`market_index`, `index_close`) and the change tracking that `python -m gql db init`
  creates: a version row every committed change increments, and a change log of the rows it touched.
- `connect.py`: the URLs users have (`postgresql://`, `mysql://`) as engines with bounded calls.
- `source.py`: the data set as snapshots: a full load in one transaction, then incremental pickups that
  read only the changed rows.
- `follow.py`: how a process hears of a commit: LISTEN/NOTIFY on PostgreSQL, a version poll on MariaDB/MySQL.
"""
