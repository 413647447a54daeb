"""The fake's `where` (fake_where.py) against Mixpanel's documentation, example by example.

Each case quotes its source: the reference page "Segmentation Expressions"
(https://docs.mixpanel.com/reference/segmentation-expressions), the help article "How do I build
segmentation expressions" (help.mixpanel.com ... 115005061286) and MIXPANEL_SPEC.md section 4. A
`where` that works on Mixpanel must select the same records here, and one Mixpanel refuses must be
a 400 with a message that names the expression and the place, over real HTTP too.
"""

import orjson
import pytest
import requests

from mixpanel_assets_tests.fake_mixpanel import PROJECT_ID, SECRET, USERNAME
from mixpanel_assets_tests.fake_where import UNDEFINED, DateTime, WhereError, parse_where, selects

T = 1_732_233_600  # 2024-11-22T00:00:00Z


def value(expression: str, props: dict | None = None, time: float | None = T):
    return parse_where(expression)((props or {}, time))


def chosen(expression: str, records: list[dict]) -> list[int]:
    node = parse_where(expression)
    return [i for i, props in enumerate(records) if selects(node, (props, T))]


# --- the reference page's "Examples" table ------------------------------------------------------------


def test_in_a_list_literal():
    # `properties["account_id"] in [1,2,3,4]`: "Returns `true` if `account_id` event property is 1, 2, 3,
    # or 4, otherwise `false`."
    records = [{"account_id": i} for i in range(7)] + [{"account_id": "2"}, {}]
    assert chosen('properties["account_id"] in [1,2,3,4]', records) == [1, 2, 3, 4]


def test_a_user_property_equals_a_string():
    # `user["$email"] == "allison@example.com"`: "Returns `true` if `$email` user property is
    # "allison@example.com" otherwise `false`."
    expression = 'user["$email"] == "allison@example.com"'
    assert value(expression, {"$email": "allison@example.com"}) is True
    assert value(expression, {"$email": "bob@example.com"}) is False
    assert value(expression, {}) is False


def test_defined_is_the_uis_is_set():
    # `defined(properties["My Prop"])`: "Returns `true` if `My Prop` event property has any value,
    # otherwise `false`. This is the same as "is set" in the UI."
    records = [{"My Prop": "x"}, {"My Prop": 0}, {"My Prop": False}, {"other": 1}]
    assert chosen('defined(properties["My Prop"])', records) == [0, 1, 2]


def test_not_defined_is_the_uis_is_not_set():
    # `not defined(properties["city"])`: "Returns `false` if `city` event property has any value,
    # otherwise `true`. This is the same as "is not set" in the UI."
    assert chosen('not defined(properties["city"])', [{"city": "Oslo"}, {}, {"city": ""}]) == [1]


# --- "Typecast Operations" and the casting tables ------------------------------------------------------


def test_boolean_cast_of_true_and_false_strings():
    # "if `properties["signed up"]` has values of `"true"` and `"false"` as strings, and you wish to encode
    # them as booleans, you may cast them by using the `boolean()` typecast function:
    # boolean(properties["signed up"])"
    records = [{"signed up": "true"}, {"signed up": "false"}, {}]
    assert chosen('boolean(properties["signed up"])', records) == [0]
    assert chosen('boolean(properties["signed up"]) == true', records) == [0]


@pytest.mark.parametrize("prop, expected", [
    ("hello", "hello"),   # "String | Same String"
    (12, "12"),           # "Number | String containing the decimal representation of the number."
    (2.5, "2.5"),
    (True, "true"),       # "Boolean | "true" or "false""
    (False, "false"),
    (None, None),         # "null | null"
])
def test_casting_to_string(prop, expected):
    assert value('string(properties["p"])', {"p": prop}) == expected
    assert value('string(properties["missing"])') is UNDEFINED  # "Undefined | undefined"


@pytest.mark.parametrize("prop, expected", [
    ("42.5", 42.5),       # "String | Attempts to interpret the string as a decimal."
    ("abc", UNDEFINED),   # "If this fails, the value becomes undefined."
    (7, 7),               # "Number | Same number"
    (True, 1.0),          # "Boolean | 1.0 if true, 0.0 if false"
    (False, 0.0),
    (None, UNDEFINED),    # "null | undefined"
])
def test_casting_to_number(prop, expected):
    assert value('number(properties["p"])', {"p": prop}) == expected
    assert value('number(properties["missing"])') is UNDEFINED  # "undefined | undefined"


def test_number_cast_compares_a_numeric_string_with_a_number():
    assert chosen('number(properties["amount"]) >= 100', [{"amount": "150"}, {"amount": "99.5"}, {"amount": "x"}]) == [0]


# --- "Binary Operations" ----------------------------------------------------------------------------------


def test_arithmetic_then_comparison():
    # The brief's case: `properties["x"] + 1 > 100`; "-", "*", "/", "%" on numbers.
    assert chosen('properties["x"] + 1 > 100', [{"x": 100}, {"x": 99}, {"x": "100"}, {}]) == [0]
    assert value('properties["a"] * 2 - 1', {"a": 3}) == 5
    assert value('properties["a"] / 4', {"a": 3}) == 0.75
    assert value('2 + 3 * 4') == 14 and value('(2 + 3) * 4') == 20


def test_division_by_zero_is_undefined():
    # "The division operator will return undefined if the divisor is 0."
    assert value('properties["a"] / 0', {"a": 3}) is UNDEFINED


def test_remainder_takes_the_dividends_sign():
    # "The sign of the value of the remainder will be equivalent to the dividend."
    assert value('-7 % 3') == -1 and value('7 % -3') == 1


def test_arithmetic_on_other_types_is_undefined():
    # "All four of these operators expect both operands to be of the type number, or else the result is
    # undefined."
    assert value('properties["s"] - 1', {"s": "5"}) is UNDEFINED
    assert value('properties["b"] * 2', {"b": True}) is UNDEFINED


def test_plus_adds_numbers_and_concatenates_strings():
    # "The "+" operator behaves as addition if its two operands are of type number. However, if its two
    # operands are of type string, it will concatenate the two strings. In other cases, the result is
    # undefined."
    assert value('1 + 2') == 3
    assert value('properties["first"] + " " + properties["last"]', {"first": "Ada", "last": "L"}) == "Ada L"
    assert value('"n" + 1') is UNDEFINED


def test_equality_across_types_is_false():
    # "The equals operator "==" will always return a boolean. ... If the types of its operands are not
    # equal, false is returned. The not equals operator "!=" returns false when the equals operator would
    # return true and vice-versa."
    assert value('properties["n"] == "1"', {"n": 1}) is False
    assert value('properties["n"] != "1"', {"n": 1}) is True
    assert value('properties["b"] == 1', {"b": True}) is False  # a boolean is not the number 1
    assert value('properties["n"] == 1.0', {"n": 1}) is True


def test_comparison_across_types_is_undefined():
    # "The comparison operators ">", ">=", "<", and "<=" returns a boolean value based on evaluating the
    # comparison when its operands are both of type number. When its types are not equal, undefined is
    # returned."
    assert value('properties["n"] > 1', {"n": 2}) is True
    assert value('properties["n"] > "1"', {"n": 2}) is UNDEFINED


def test_in_is_a_substring_test_for_strings():
    # "The "in" operator returns true if both operands are of type string and the first string is a
    # substring of the second. When both operands are of differing types, undefined is returned."
    assert value('"ace" in properties["s"]', {"s": "Facebook"}) is True
    assert value('"x" in properties["s"]', {"s": "Facebook"}) is False
    assert value('1 in properties["s"]', {"s": "1"}) is UNDEFINED


def test_in_a_list_property():
    # A list property (Data Types page: "Favourite Genres = ["Folk","Alternative"]") holds its members.
    assert value('"Folk" in properties["genres"]', {"genres": ["Folk", "Alternative"]}) is True
    assert value('"Rock" in properties["genres"]', {"genres": ["Folk", "Alternative"]}) is False


def test_and_or_take_booleans_and_undefined_and_refuse_other_types():
    # "The logical operators "and" and "or" accept boolean and undefined operands. An operand with type
    # undefined evaluates as false. Any other types will result in an error."
    assert value('properties["missing"] or true') is True
    assert value('properties["missing"] and true') is False
    with pytest.raises(WhereError, match="'and' takes boolean operands, got string"):
        value('properties["s"] and true', {"s": "yes"})


def test_keywords_in_upper_case():
    records = [{"a": 1, "b": 2}, {"a": 1, "b": 3}, {"a": 0, "b": 3}]
    assert chosen('properties["a"] == 1 AND properties["b"] == 2', records) == [0]
    assert chosen('properties["a"] == 0 OR properties["b"] == 2', records) == [0, 2]
    assert chosen('NOT properties["a"] == 1', records) == [2]


# --- "Unary and Math Operations" ------------------------------------------------------------------------


def test_unary_minus():
    # "The "-" operator will negate an operand of type number, and return undefined otherwise."
    assert value('-properties["n"]', {"n": 4}) == -4
    assert value('-properties["s"]', {"s": "4"}) is UNDEFINED


def test_not():
    # "The "not" operator will perform the logical not on an operand of type boolean. It will also evaluate
    # an operand of type undefined as true. All other operands will be evaluated to undefined."
    assert value('not properties["b"]', {"b": True}) is False
    assert value('not properties["missing"]') is True
    assert value('not properties["n"]', {"n": 3}) is UNDEFINED


@pytest.mark.parametrize("expression, expected", [
    ('floor(properties["n"])', 2), ('ceil(properties["n"])', 3), ('round(properties["n"])', 3),
    ('round(-2.5)', -3), ('floor(properties["s"])', UNDEFINED),
])
def test_floor_round_ceil(expression, expected):
    # "The "floor", "round", and "ceil" functions perform their mathematical operations on an operand of
    # type number. On all other types, it will return undefined."
    assert value(expression, {"n": 2.5, "s": "2.5"}) == expected


# --- the help article's selectors ------------------------------------------------------------------------


@pytest.mark.parametrize("expression, expected", [
    ('(properties["$city"] == "Chicago")', [0]),                         # "Equals"
    ('(properties["$city"] != "Chicago")', [1, 2]),                      # "Does not equal"
    ('("Facebook" in properties["$referring_domain"])', [0]),            # "Contains"
    ('(not "Facebook" in properties["$referring_domain"])', [1, 2]),     # "Does not contain"
    ('(defined (properties["$device"]))', [0, 1]),                       # "Set"
    ('(not defined (properties["$device"]))', [2]),                      # "Not set"
    ('(properties["$browser"] == "Chrome" and not "" in properties["$email"])', [2]),
])
def test_the_help_articles_selectors(expression, expected):
    records = [
        {"$city": "Chicago", "$referring_domain": "www.facebook.com Facebook", "$device": "iPhone", "$browser": "Chrome",
         "$email": "a@example.com"},
        {"$city": "Oslo", "$referring_domain": "google.com", "$device": "Pixel", "$browser": "Chrome",
         "$email": "b@example.com"},
        {"$referring_domain": "bing.com", "$browser": "Chrome"},
    ]
    assert chosen(expression, records) == expected


# --- datetime (MIXPANEL_SPEC.md section 4) -----------------------------------------------------------------


def test_time_against_datetime_of_epoch_seconds_and_of_an_iso_string():
    # `properties["$time"]>=datetime(<epoch>)` (Airbyte) and `event["$time"] >= datetime("YYYY-MM-DDT00:00:00")`
    assert value(f'properties["$time"]>=datetime({T})') is True
    assert value(f'properties["$time"]>=datetime({T + 1})') is False
    assert value('event["$time"] >= datetime("2024-11-22T00:00:00")') is True
    assert value('event["$time"] >= datetime("2024-11-23T00:00:00")') is False
    assert value('properties["$time"] > 5') is UNDEFINED  # a datetime is not a number


def test_datetime_cast_of_a_date_property_and_string_of_a_datetime():
    assert value('datetime(properties["Last Login"]) < datetime("2024-01-01")', {"Last Login": "2023-12-31T10:00:00"}) is True
    assert value('datetime(properties["Last Login"])', {"Last Login": "soon"}) is UNDEFINED
    assert value(f'string(datetime({T}))') == "2024-11-22T00:00:00"
    assert isinstance(value(f'datetime({T})'), DateTime)


# --- mistakes are refused with a message that says where --------------------------------------------------


@pytest.mark.parametrize("expression, message", [
    ('properties["a"] ==', "ends too early at position 18"),
    ('properties["a"] === 1', "cannot read '= 1' at position 18"),
    ('properties[a] == 1', "expected 'lit' but found 'a' at position 11"),
    ('properties[1] == 1', "property names are strings in quotes, not 1 at position 11"),
    ('(properties["a"] == 1', "expected ')' but found the end at position 21"),
    ('properties["a"] == 1)', "unexpected ')' at position 20"),
    ('properties["a"] in [1, 2', "expected ']' but found the end"),
    ('eval("1")', "unsupported 'eval' at position 0"),
    ('properties["a"] == 1 ; drop', "cannot read '; drop' at position 21"),
    ('datetime("next tuesday")', "datetime('next tuesday') is not epoch seconds or YYYY-MM-DDTHH:MM:SS"),
])
def test_malformed_expressions_are_refused_with_the_place(expression, message):
    with pytest.raises(WhereError) as caught:
        parse_where(expression)
    assert message in str(caught.value) and repr(expression) in str(caught.value)


def test_over_http_a_rich_where_selects_and_a_malformed_one_is_a_400(fake_mixpanel):
    fake_mixpanel.add_events([
        {"event": "Purchase", "properties": {"time": T + i * 60, "distinct_id": f"u{i}", "$insert_id": f"i{i}",
                                             "amount": i * 10, "plan": ["free", "pro", "team"][i % 3]}}
        for i in range(12)])
    auth = (USERNAME, SECRET)
    url = f"{fake_mixpanel.url}/api/2.0/export"
    params = {"project_id": PROJECT_ID, "from_date": "2024-11-22", "to_date": "2024-11-22"}
    where = 'properties["plan"] in ["pro", "team"] AND properties["amount"] * 2 + 1 > 100 and not properties["amount"] % 20 == 0'
    response = requests.get(url, params={**params, "where": where}, auth=auth, timeout=10)
    assert response.status_code == 200
    amounts = [orjson.loads(line)["properties"]["amount"] for line in response.content.splitlines()]
    assert amounts == [50, 70, 110]

    response = requests.get(url, params={**params, "where": 'properties["plan"] == '}, auth=auth, timeout=10)
    assert response.status_code == 400
    body = response.json()
    assert "invalid where expression" in body["error"] and "position" in body["error"]
    assert body["status"] == "error" and body["request"].startswith("/api/2.0/export?")

    response = requests.get(url, params={**params, "where": 'properties["plan"] or true'}, auth=auth, timeout=10)
    assert response.status_code == 400 and "'or' takes boolean operands" in response.json()["error"]


def test_over_http_engage_where_uses_the_same_grammar(fake_mixpanel):
    fake_mixpanel.add_profiles([{"$distinct_id": f"u{i}", "$properties": {"$email": f"u{i}@example.com", "visits": i}}
                                for i in range(5)])
    response = requests.post(f"{fake_mixpanel.url}/api/query/engage", params={"project_id": PROJECT_ID},
                             data={"where": 'user["visits"] in [1, 3] or "u4@" in user["$email"]'},
                             auth=(USERNAME, SECRET), timeout=10)
    assert response.status_code == 200
    assert sorted(p["$distinct_id"] for p in response.json()["results"]) == ["u1", "u3", "u4"]
