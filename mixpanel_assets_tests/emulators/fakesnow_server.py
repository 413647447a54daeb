"""Run fakesnow's HTTP server (the real snowflake-connector-python talks to it) on 127.0.0.1.

One patch, to the emulator only: fakesnow treats any `$word` in SQL text as a session variable and
fails, so `properties:"$city"` (how Mixpanel's `$` properties are read) would never run. The
replacement inlines only variables that were actually SET.

usage: python fakesnow_server.py PORT
"""

import re
import sys

import uvicorn
from fakesnow.variables import Variables


def _inline_variables(self, sql):
    for name, value in self._variables.items():
        sql = re.sub(rf"\${name}\b", value, sql, flags=re.IGNORECASE)
    return sql


Variables.inline_variables = _inline_variables

import fakesnow.server  # after the patch, so every session it opens uses it

uvicorn.run(fakesnow.server.app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
