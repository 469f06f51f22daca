// JSON Lines to Arrow column buffers, one pass, in C++ (simdjson's On-Demand API).
//
// A Spec is a tree of the key paths a lake table maps to typed columns (see
// rtclake/tables.py). Spec.parse(block) reads every line of a block of JSON Lines once
// and fills, per mapped key path, the buffers of one Arrow array (validity bitmap,
// values or offsets + data), and writes the keys no column takes into an `extra` JSON
// object per line (NULL when there are none): the keys a table does not map, and those a
// column passed over for another of its keys holding another value (see Parser::line).
// A value of the wrong
// type for its column (a string where a number belongs) is kept in `extra` and noted
// with its JSON path; a line that is not a JSON object is reported and left out. Times
// (RFC 3339 text, or seconds / milliseconds / microseconds / nanoseconds since the epoch,
// told apart by magnitude) become microseconds since the epoch, UTC.
//
// Why On-Demand and std::from_chars: Sora prints every float with 21 significant digits
// (Erlang's `1.75342361155652490234e+12`), which simdjson's eager number parser sends to
// its slow path; here a number is only parsed when a column takes it, by libstdc++'s
// from_chars (correctly rounded, fast on long mantissas). Every value is still checked:
// numbers against JSON's grammar, strings by unescaping, literals by reading them.
//
// Column buffers come from a process-wide pool and go back to it when Arrow releases
// them: a fresh buffer costs a page fault per 4 KiB, which was a third of the import.
// The GIL is released while parsing; several threads may parse with one Spec at once.

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <simdjson.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <unordered_map>
#include <vector>

namespace {

namespace od = simdjson::ondemand;
using od::json_type;

// Column kinds, in the order of rtclake.tables.NATIVE_KINDS.
enum Kind : int { STRING = 0, ID, TIME, FLOAT, INT, BOOL, JSON, N_KINDS };

// Column memory is written before it is read, so growing it need not zero it first.
template <typename T>
struct DefaultInit : std::allocator<T> {
  template <typename U>
  struct rebind {
    using other = DefaultInit<U>;
  };
  DefaultInit() = default;
  template <typename U>
  DefaultInit(const DefaultInit<U> &) noexcept {}
  template <typename U>
  void construct(U *at) noexcept {
    ::new (static_cast<void *>(at)) U;
  }
  template <typename U, typename... Args>
  void construct(U *at, Args &&...args) {
    ::new (static_cast<void *>(at)) U(std::forward<Args>(args)...);
  }
};

using Bytes = std::vector<uint8_t, DefaultInit<uint8_t>>;

// ---------------------------------------------------------------------------------
// The buffer pool.

class Pool {
 public:
  // A buffer of `size` bytes (contents unspecified), recycled when one is big enough.
  Bytes take(size_t size) {
    {
      std::lock_guard<std::mutex> hold(lock_);
      size_t best = free_.size();
      for (size_t i = 0; i < free_.size(); ++i) {
        size_t cap = free_[i].capacity();
        if (cap >= size && (best == free_.size() || cap < free_[best].capacity())) best = i;
      }
      if (best != free_.size()) {
        Bytes out = std::move(free_[best]);
        free_[best] = std::move(free_.back());
        free_.pop_back();
        held_ -= out.capacity();
        out.resize(size);
        return out;
      }
    }
    return Bytes(size);
  }

  void give(Bytes &&bytes) {
    size_t cap = bytes.capacity();
    if (cap < 4096) return;  // not worth keeping
    std::lock_guard<std::mutex> hold(lock_);
    if (held_ + cap > limit_) return;  // freed by the caller's destructor
    held_ += cap;
    bytes.clear();
    free_.push_back(std::move(bytes));
  }

  void release() {
    std::vector<Bytes> dropped;
    {
      std::lock_guard<std::mutex> hold(lock_);
      dropped.swap(free_);
      held_ = 0;
    }
  }

  size_t set_limit(size_t limit) {
    std::lock_guard<std::mutex> hold(lock_);
    size_t before = limit_;
    limit_ = limit;
    return before;
  }

  size_t held() {
    std::lock_guard<std::mutex> hold(lock_);
    return held_;
  }

 private:
  std::mutex lock_;
  std::vector<Bytes> free_;
  size_t held_ = 0;
  size_t limit_ = size_t{256} << 20;  // set_pool_limit changes it
};

Pool pool;

// ---------------------------------------------------------------------------------
// Arrays under construction.

struct Node {
  int leaf = -1;  // column index, or -1 for an object node
  int id = 0;     // index of this object node, for the walker's per-node guesses
  std::vector<std::unique_ptr<std::string>> names;  // own the keys of `index`
  std::vector<std::unique_ptr<Node>> children;
  std::unordered_map<std::string_view, int> index;  // key -> position in children
};

// A column's values while a block is parsed: appended in row order, one entry per row
// that has a value. Each line writes some thirty of a table's ~170 columns; writing
// them straight into dense Arrow buffers scattered the writes over ~30 MB and cost as
// much as the parsing. Appends stay in cache; Column::finish then fills each dense
// buffer in one sequential pass. Kept per thread, so their memory is used again.
struct Sparse {
  std::vector<uint32_t> rows;   // the rows that have a value, ascending
  std::vector<uint64_t> fixed;  // INT, FLOAT, TIME: the value's bits; BOOL: 0 or 1
  std::vector<uint32_t> ends;   // text kinds: end offset of the row's text in `text`

  void clear() {
    rows.clear();
    fixed.clear();
    ends.clear();
  }
};

thread_local std::vector<Sparse> scratch;

// One Arrow array under construction.
struct Column {
  Kind kind;
  bool strict = false;  // a value this column cannot take makes the line bad
  std::string path;  // $.a.b, for error messages
  Sparse *sparse = nullptr;
  Bytes text;             // text kinds: the UTF-8 of all values, back to back
  size_t text_used = 0;
  int64_t capacity = 0;  // lines of the block
  // The finished array (Column::finish): empty buffers when no row has a value.
  Bytes validity, values, offsets;
  int64_t nulls = 0;
  bool active = false;  // has finished buffers

  bool is_text() const { return kind == STRING || kind == ID || kind == JSON; }

  // Whether `row` (the line being parsed: the last one appended) has a value here.
  bool has(int64_t row) const {
    return !sparse->rows.empty() && sparse->rows.back() == static_cast<uint32_t>(row);
  }

  // Whether the last values appended here and in `other` are the same value.
  bool same_last(const Column &other) const {
    if (kind != other.kind) return false;
    if (!is_text()) return sparse->fixed.back() == other.sparse->fixed.back();
    return last_text() == other.last_text();
  }

  std::string_view last_text() const {
    const std::vector<uint32_t> &e = sparse->ends;
    size_t start = e.size() >= 2 ? e[e.size() - 2] : 0;
    return std::string_view(reinterpret_cast<const char *>(text.data()) + start, e.back() - start);
  }

  void reset(Sparse *s, int64_t rows) {
    sparse = s;
    sparse->clear();
    text_used = 0;
    capacity = rows;
    active = false;
    nulls = 0;
  }

  // Undo whatever this column holds for `row`: the key came twice (the last one counts),
  // a null came later, or the line is bad. A row's value, if any, is the last one.
  void clear(int64_t row) {
    std::vector<uint32_t> &r = sparse->rows;
    if (r.empty() || r.back() != static_cast<uint32_t>(row)) return;
    r.pop_back();
    if (is_text()) {
      sparse->ends.pop_back();
      text_used = sparse->ends.empty() ? 0 : sparse->ends.back();
    } else {
      sparse->fixed.pop_back();
    }
  }

  void put_fixed(int64_t row, uint64_t bits) {
    clear(row);
    sparse->rows.push_back(static_cast<uint32_t>(row));
    sparse->fixed.push_back(bits);
  }
  void put_int(int64_t row, int64_t v) { put_fixed(row, static_cast<uint64_t>(v)); }
  void put_float(int64_t row, double v) {
    uint64_t bits;
    std::memcpy(&bits, &v, 8);
    put_fixed(row, bits);
  }
  void put_bool(int64_t row, bool v) { put_fixed(row, v ? 1 : 0); }

  void put_text(int64_t row, std::string_view value) {
    clear(row);
    if (text.empty()) text = pool.take(static_cast<size_t>(capacity) * 16);
    if (text_used + value.size() > text.size())
      text.resize(std::max(text.size() * 2, text_used + value.size()));
    std::memcpy(text.data() + text_used, value.data(), value.size());
    text_used += value.size();
    sparse->rows.push_back(static_cast<uint32_t>(row));
    sparse->ends.push_back(static_cast<uint32_t>(text_used));
  }

  // The dense Arrow buffers of `rows` rows, in one pass over the values.
  void finish(int64_t rows) {
    const std::vector<uint32_t> &present = sparse->rows;
    nulls = rows - static_cast<int64_t>(present.size());
    if (present.empty()) {
      if (is_text()) pool.give(std::move(text));
      return;
    }
    active = true;
    size_t bitmap = std::max<size_t>(static_cast<size_t>((rows + 7) / 8), 1);
    validity = pool.take(bitmap);
    std::memset(validity.data(), 0, bitmap);
    for (uint32_t r : present) validity[r / 8] |= static_cast<uint8_t>(1u << (r % 8));
    if (is_text()) {
      offsets = pool.take((static_cast<size_t>(rows) + 1) * 4);
      int32_t *o = reinterpret_cast<int32_t *>(offsets.data());
      o[0] = 0;
      size_t j = 0;
      for (int64_t r = 0; r < rows; ++r) {
        bool has = j < present.size() && present[j] == static_cast<uint32_t>(r);
        o[r + 1] = has ? static_cast<int32_t>(sparse->ends[j++]) : o[r];
      }
      text.resize(text_used);
      values = std::move(text);
      text = Bytes();
    } else if (kind == BOOL) {
      values = pool.take(bitmap);
      std::memset(values.data(), 0, bitmap);
      for (size_t j = 0; j < present.size(); ++j)
        if (sparse->fixed[j]) values[present[j] / 8] |= static_cast<uint8_t>(1u << (present[j] % 8));
    } else {
      values = pool.take(static_cast<size_t>(rows) * 8);
      uint64_t *v = reinterpret_cast<uint64_t *>(values.data());
      std::memset(v, 0, static_cast<size_t>(rows) * 8);
      for (size_t j = 0; j < present.size(); ++j) v[present[j]] = sparse->fixed[j];
    }
  }

  // Back to the pool (a column of a failed block).
  void recycle() {
    pool.give(std::move(text));
    if (!active) return;
    pool.give(std::move(validity));
    pool.give(std::move(values));
    pool.give(std::move(offsets));
    active = false;
  }
};

// ---------------------------------------------------------------------------------
// Scalars.

struct Failure {
  std::string message;  // the line is left out with this message
};

[[noreturn]] void invalid(const char *what) { throw Failure{std::string("invalid JSON: ") + what}; }

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\n' ||
                        s.back() == '\r'))
    s.remove_suffix(1);
  return s;
}

// JSON's number grammar: 0 not a number, 1 an integer, 2 a number with a fraction or
// an exponent.
int number_kind(std::string_view s) {
  size_t i = 0, n = s.size();
  auto digit = [&](size_t at) { return at < n && s[at] >= '0' && s[at] <= '9'; };
  if (i < n && s[i] == '-') ++i;
  if (!digit(i)) return 0;
  if (s[i] == '0')
    ++i;
  else
    while (digit(i)) ++i;
  int kind = 1;
  if (i < n && s[i] == '.') {
    ++i;
    if (!digit(i)) return 0;
    while (digit(i)) ++i;
    kind = 2;
  }
  if (i < n && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    if (i < n && (s[i] == '+' || s[i] == '-')) ++i;
    if (!digit(i)) return 0;
    while (digit(i)) ++i;
    kind = 2;
  }
  return i == n ? kind : 0;
}

// A JSON value's raw text (trimmed) and, for numbers, its kind; literals are checked.
struct Scalar {
  json_type type;
  std::string_view raw;
  int number = 0;  // number_kind(raw) for numbers
};

Scalar scalar(od::value &value, json_type type) {
  Scalar s{type, trim(value.raw_json_token()), 0};
  switch (type) {
    case json_type::number:
      s.number = number_kind(s.raw);
      if (s.number == 0) invalid("not a number");
      break;
    case json_type::string: {
      std::string_view unused;
      if (value.get_string().get(unused) != simdjson::SUCCESS) invalid("bad string");
      break;
    }
    case json_type::boolean: {
      bool unused;
      if (value.get_bool().get(unused) != simdjson::SUCCESS) invalid("bad literal");
      break;
    }
    case json_type::null:
      if (!value.is_null().value()) invalid("bad literal");
      break;
    default:
      break;
  }
  return s;
}

const char *type_name(json_type t, int number) {
  switch (t) {
    case json_type::array: return "array";
    case json_type::object: return "object";
    case json_type::number: return number == 1 ? "int" : "float";
    case json_type::string: return "str";
    case json_type::boolean: return "bool";
    case json_type::null: return "null";
  }
  return "value";
}

void escape_into(std::string &out, std::string_view s) {
  static const char hex[] = "0123456789abcdef";
  out.push_back('"');
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(c));
    } else if (c < 0x20) {
      out.append("\\u00");
      out.push_back(hex[c >> 4]);
      out.push_back(hex[c & 15]);
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  out.push_back('"');
}

// Any JSON value, checked, appended as compact JSON (numbers and strings as written).
void copy_value(std::string &out, od::value value) {
  json_type type = value.type().value();
  if (type == json_type::object) {
    out.push_back('{');
    bool first = true;
    for (auto member : value.get_object().value()) {
      od::field field;
      if (std::move(member).get(field) != simdjson::SUCCESS) invalid("bad object member");
      if (!first) out.push_back(',');
      first = false;
      escape_into(out, field.unescaped_key().value());
      out.push_back(':');
      copy_value(out, field.value());
    }
    out.push_back('}');
  } else if (type == json_type::array) {
    out.push_back('[');
    bool first = true;
    for (auto item : value.get_array().value()) {
      if (!first) out.push_back(',');
      first = false;
      copy_value(out, item.value());
    }
    out.push_back(']');
  } else {
    out.append(scalar(value, type).raw);
  }
}

// Days since 1970-01-01 of a proleptic Gregorian date (the civil-calendar formula).
int64_t days_from_civil(int64_t y, int64_t m, int64_t d) {
  y -= m <= 2;
  int64_t era = (y >= 0 ? y : y - 399) / 400;
  int64_t yoe = y - era * 400;
  int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

// rtclake's one rule for a time written as text (the HTTP edge calls it through
// parse_time, the parser below for every line): RFC 3339, YYYY-MM-DD, 'T' (or 't', or a
// space), HH:MM:SS, an optional fraction (digits past microseconds are cut), and a
// required offset, 'Z' (or 'z') or +HH:MM / -HH:MM. 24:00:00 is the end of the day.
// False if the text is anything else, not a real date, or outside years 1-9999 in UTC.
bool rfc3339_us(std::string_view s, int64_t &out) {
  auto num = [&](size_t at, size_t n, int64_t &v) {
    if (at + n > s.size()) return false;
    v = 0;
    for (size_t i = at; i < at + n; ++i) {
      if (s[i] < '0' || s[i] > '9') return false;
      v = v * 10 + (s[i] - '0');
    }
    return true;
  };
  int64_t year, month, day, hour, minute, second;
  if (s.size() < 19 || !num(0, 4, year) || s[4] != '-' || !num(5, 2, month) || s[7] != '-' ||
      !num(8, 2, day))
    return false;
  if (s[10] != 'T' && s[10] != 't' && s[10] != ' ') return false;
  if (!num(11, 2, hour) || s[13] != ':' || !num(14, 2, minute) || s[16] != ':' ||
      !num(17, 2, second))
    return false;
  int64_t micros = 0;
  size_t i = 19;
  if (i < s.size() && s[i] == '.') {
    size_t start = ++i;
    int64_t scale = 100000;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
      micros += (s[i] - '0') * scale;
      scale /= 10;
      ++i;
    }
    if (i == start) return false;
  }
  int64_t offset = 0;  // minutes east of UTC
  if (i >= s.size()) return false;  // no offset: the time zone is not known
  {
    if ((s[i] == 'Z' || s[i] == 'z') && i + 1 == s.size()) {
      // UTC
    } else if ((s[i] == '+' || s[i] == '-') && i + 6 == s.size() && s[i + 3] == ':') {
      int64_t oh, om;
      if (!num(i + 1, 2, oh) || !num(i + 4, 2, om) || oh > 23 || om > 59) return false;
      offset = (s[i] == '-' ? -1 : 1) * (oh * 60 + om);
    } else {
      return false;
    }
  }
  static const int month_days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  if (year < 1 || month < 1 || month > 12 || day < 1) return false;
  bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
  if (day > month_days[month - 1] + (month == 2 && leap)) return false;
  bool end_of_day = hour == 24 && minute == 0 && second == 0 && micros == 0;
  if ((hour > 23 && !end_of_day) || minute > 59 || second > 59) return false;
  int64_t secs = days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second -
                 offset * 60;
  // In UTC, within years 1-9999 (what Python, Arrow's date partitions and DuckDB share):
  // an offset can push 9999-12-31 or 0001-01-01 out.
  static const int64_t first = days_from_civil(1, 1, 1) * 86400;
  static const int64_t last = days_from_civil(10000, 1, 1) * 86400;
  if (secs < first || secs >= last) return false;
  out = secs * 1000000 + micros;
  return true;
}

// A number of seconds, milliseconds, microseconds or nanoseconds since the epoch, told
// apart by magnitude, as microseconds (rounded half away from zero).
int64_t epoch_number_us(double x) {
  double us = x < 1e11 ? x * 1e6 : x < 1e14 ? x * 1e3 : x < 1e17 ? x : x / 1e3;
  return static_cast<int64_t>(std::round(us));
}

int64_t epoch_integer_us(int64_t x) {
  if (x < 100000000000LL) return x * 1000000;
  if (x < 100000000000000LL) return x * 1000;
  if (x < 100000000000000000LL) return x;
  return x / 1000 + (x % 1000 >= 500);
}

constexpr double kEpochMax = 9223372036854775807.0;  // 2**63 - 1, as rtclake.tables

// ---------------------------------------------------------------------------------
// Choices among keys.

// A key that a reader of the payload may pass over: a reader (a column, the envelope's
// time) takes the first of its keys that has a value, so a key that comes after another
// in every reader that has it goes unread when one before it has a value. `places`: each
// reader that has it, as (reader, the key's position in it).
struct Rival {
  int leaf;
  std::vector<std::pair<int, int>> places;
};

struct Choices {
  std::vector<std::vector<int>> readers;  // leaf indices, in order of preference
  std::vector<Rival> rivals;
};

// ---------------------------------------------------------------------------------
// The walker.

class Parser {
 public:
  Parser(Node *root, std::vector<Column> *columns, int nodes, const Choices *choices)
      : root_(root), cols_(columns), choices_(choices) {
    guess_.resize(static_cast<size_t>(nodes));
    passed_over_.assign(columns->size(), 0);
  }

  // The next line goes into `row`. First, before the line is even read: a line that
  // simdjson refuses at once (not UTF-8, a string never closed) is rolled back too, and
  // its rollback must not touch the line before it.
  void begin(int64_t row) {
    row_ = row;
    touched_.clear();
  }

  // Parse one line into the row of begin(); on a bad line, raise Failure (the caller
  // rolls back).
  //
  // A key no reader takes because another key of the same reader has a value (a line
  // with `device_id` and `deviceId`, `time` and `ts`) belongs in `extra`: nothing a
  // source sends is dropped. Not when it holds the value taken: Sora repeats
  // `rtc_data.id` as `rtc_id` on every line. Which key a reader takes is only known at the
  // line's end, so such a line (rare) is walked a second time, those keys written into
  // `extra` as they were sent and not into their columns.
  void line(od::document &doc, std::string &extra) {
    walk_line(doc, extra);
    if (!mark_passed_over()) return;
    rollback();
    extra.clear();
    doc.rewind();
    second_pass_ = true;
    try {
      walk_line(doc, extra);
    } catch (...) {
      end_second_pass();
      throw;
    }
    end_second_pass();
  }

  void rollback() {
    for (int i : touched_) (*cols_)[static_cast<size_t>(i)].clear(row_);
  }

  std::string note;  // the first misfit of the current line

 private:
  Node *root_;
  std::vector<Column> *cols_;
  const Choices *choices_;
  int64_t row_ = 0;
  std::vector<int> touched_;
  std::string text_;
  // Per object node: after child i (slot i + 1; slot 0 is the start), the child that
  // came next last time. Lines of one kind repeat their key order, so most keys are
  // matched by one comparison of raw bytes instead of unescaping and hashing.
  std::vector<std::vector<int>> guess_;
  // Per column: its key has a value on this line that no reader takes (second pass).
  std::vector<uint8_t> passed_over_;
  bool second_pass_ = false;

  void walk_line(od::document &doc, std::string &extra) {
    touched_.clear();
    note.clear();
    json_type type;
    if (doc.type().get(type) != simdjson::SUCCESS) invalid("not a JSON value");
    if (type != json_type::object) {
      // the type is read from the first character: "not json" starts as null would
      bool literal = true;
      if (type == json_type::null) {
        bool is = false;
        literal = doc.is_null().get(is) == simdjson::SUCCESS && is;
      } else if (type == json_type::boolean) {
        bool unused;
        literal = doc.get_bool().get(unused) == simdjson::SUCCESS;
      } else if (type == json_type::string) {
        std::string_view unused;
        literal = doc.get_string().get(unused) == simdjson::SUCCESS;
      }
      if (!literal) invalid("not a JSON value");
      int number = 0;
      if (type == json_type::number) {
        std::string_view raw;
        if (doc.raw_json_token().get(raw) == simdjson::SUCCESS) number = number_kind(trim(raw));
      }
      throw Failure{std::string("Expected `object`, got `") + type_name(type, number) + "`"};
    }
    od::object obj = doc.get_object().value();
    walk(obj, root_, extra, "$");
    // Past the object's end the document has no location; one left means more text.
    if (doc.current_location().error() == simdjson::SUCCESS) invalid("more after the object");
  }

  // Marks the keys with a value on this line that no reader takes, and that no reader
  // took from another key either; true if there is one.
  bool mark_passed_over() {
    bool any = false;
    for (const Rival &rival : choices_->rivals) {
      const Column &col = (*cols_)[static_cast<size_t>(rival.leaf)];
      if (!col.has(row_)) continue;
      bool taken = false;  // or its value, from a key the reader prefers
      for (const auto &[reader, position] : rival.places) {
        const std::vector<int> &keys = choices_->readers[static_cast<size_t>(reader)];
        const Column *first = nullptr;  // the reader's value
        for (int k = 0; k < position && first == nullptr; ++k) {
          const Column &before = (*cols_)[static_cast<size_t>(keys[static_cast<size_t>(k)])];
          if (before.has(row_)) first = &before;
        }
        if (first == nullptr || first->same_last(col)) {
          taken = true;
          break;
        }
      }
      if (!taken) {
        passed_over_[static_cast<size_t>(rival.leaf)] = 1;
        any = true;
      }
    }
    return any;
  }

  void end_second_pass() {
    second_pass_ = false;
    for (const Rival &rival : choices_->rivals) passed_over_[static_cast<size_t>(rival.leaf)] = 0;
  }

  // The child `field` names (its index), or -1; `key` is set to the key's text.
  int find(Node *node, int &prev, od::field &field, std::string_view &key) {
    std::vector<int> &g = guess_[static_cast<size_t>(node->id)];
    if (g.empty()) g.assign(node->children.size() + 1, -1);
    int want = g[static_cast<size_t>(prev + 1)];
    if (want >= 0) {
      const std::string &name = *node->names[static_cast<size_t>(want)];
      if (field.key().unsafe_is_equal(name)) {  // names hold no quote or backslash
        prev = want;
        key = name;
        return want;
      }
    }
    key = field.unescaped_key().value();
    auto found = node->index.find(key);
    if (found == node->index.end()) return -1;
    g[static_cast<size_t>(prev + 1)] = found->second;
    prev = found->second;
    return found->second;
  }

  static void member(std::string &extra, std::string_view key) {
    if (!extra.empty()) extra.push_back(',');
    escape_into(extra, key);
    extra.push_back(':');
  }

  // A value of the wrong type for its column stays in `extra` (nothing is dropped); the
  // first such value of a line is noted for the caller's log.
  void misfit(std::string &extra, std::string_view key, od::value &value, const char *why,
              const std::string &path) {
    if (note.empty()) note = std::string(why) + " - at `" + path + "`";
    member(extra, key);
    copy_value(extra, value);
  }

  // Writes the unmapped keys of `obj` into `extra` as the members of an object (no braces).
  void walk(od::object &obj, Node *node, std::string &extra, const std::string &path) {
    int prev = -1;
    for (auto member_result : obj) {
      od::field field;
      if (std::move(member_result).get(field) != simdjson::SUCCESS) invalid("bad object member");
      std::string_view key;
      int at = find(node, prev, field, key);
      od::value &value = field.value();
      if (at < 0) {
        member(extra, key);
        copy_value(extra, value);
        continue;
      }
      Node *child = node->children[static_cast<size_t>(at)].get();
      if (child->leaf >= 0) {
        if (second_pass_ && passed_over_[static_cast<size_t>(child->leaf)]) {
          member(extra, key);
          copy_value(extra, value);
          continue;
        }
        Column &col = (*cols_)[static_cast<size_t>(child->leaf)];
        touched_.push_back(child->leaf);
        if (const char *why = put(col, value)) {
          if (col.strict) throw Failure{std::string(why) + " - at `" + col.path + "`"};
          col.clear(row_);
          misfit(extra, key, value, why, col.path);
        }
        continue;
      }
      json_type type = value.type().value();
      if (type == json_type::null) {
        scalar(value, type);
        continue;
      }
      std::string sub_path = path + "." + std::string(key);
      if (type != json_type::object) {
        int number = type == json_type::number ? number_kind(trim(value.raw_json_token())) : 0;
        std::string why = std::string("Expected `object | null`, got `") + type_name(type, number) + "`";
        misfit(extra, key, value, why.c_str(), sub_path);
        continue;
      }
      std::string sub;
      od::object inner = value.get_object().value();
      walk(inner, child, sub, sub_path);
      if (!sub.empty()) {
        member(extra, key);
        extra.push_back('{');
        extra += sub;
        extra.push_back('}');
      }
    }
  }

  // Stores `value` in its column; nullptr, or why the column cannot take it.
  const char *put(Column &col, od::value &value) {
    json_type type = value.type().value();
    if (col.kind == JSON) {
      if (type == json_type::null) {
        scalar(value, type);
        col.clear(row_);
        return nullptr;
      }
      text_.clear();
      copy_value(text_, value);
      col.put_text(row_, text_);
      return nullptr;
    }
    if (type == json_type::object || type == json_type::array) {
      switch (col.kind) {
        case STRING: return "Expected `str | null`";
        case ID: return "Expected `str | int | null`";
        case TIME: return "Expected `datetime | int | float | null`";
        case FLOAT: return "Expected `float | null`";
        case INT: return "Expected `int | null`";
        default: return "Expected `bool | null`";
      }
    }
    if (type == json_type::string) {
      std::string_view text = value.get_string().value();  // checks the escapes
      int64_t us;
      switch (col.kind) {
        case STRING:
        case ID:
          col.put_text(row_, text);
          return nullptr;
        case TIME:
          if (!rfc3339_us(text, us)) return "Invalid RFC3339 encoded datetime";
          col.put_int(row_, us);
          return nullptr;
        case FLOAT: return "Expected `float | null`";
        case INT: return "Expected `int | null`";
        default: return "Expected `bool | null`";
      }
    }
    Scalar s = scalar(value, type);  // checked
    if (type == json_type::null) {
      col.clear(row_);  // an earlier copy of the key may have had a value
      return nullptr;
    }
    switch (col.kind) {
      case STRING:
        return "Expected `str | null`";
      case ID:
        if (s.number != 1) return "Expected `str | int | null`";
        col.put_text(row_, s.raw);
        return nullptr;
      case TIME: {
        int64_t us;
        if (type != json_type::number) {
          return "Expected `datetime | int | float | null`";
        } else if (s.number == 1) {
          int64_t v;
          auto res = std::from_chars(s.raw.data(), s.raw.data() + s.raw.size(), v);
          if (res.ec != std::errc() || v < 0) return "Expected a time in [0, 2**63)";
          us = epoch_integer_us(v);
        } else {
          double v;
          auto res = std::from_chars(s.raw.data(), s.raw.data() + s.raw.size(), v);
          if (res.ec != std::errc() || !(v >= 0 && v < kEpochMax))
            return "Expected a time in [0, 2**63)";
          us = epoch_number_us(v);
        }
        col.put_int(row_, us);
        return nullptr;
      }
      case FLOAT: {
        if (type != json_type::number) return "Expected `float | null`";
        double v;
        auto res = std::from_chars(s.raw.data(), s.raw.data() + s.raw.size(), v);
        if (res.ec != std::errc()) return "Number out of range for float64";
        col.put_float(row_, v);
        return nullptr;
      }
      case INT: {
        if (s.number != 1) return "Expected `int | null`";
        int64_t v;
        auto res = std::from_chars(s.raw.data(), s.raw.data() + s.raw.size(), v);
        if (res.ec != std::errc()) return "Integer out of range for int64";
        col.put_int(row_, v);
        return nullptr;
      }
      case BOOL:
        if (type != json_type::boolean) return "Expected `bool | null`";
        col.put_bool(row_, value.get_bool().value());
        return nullptr;
      default:
        break;
    }
    return "unknown column kind";
  }
};

// ---------------------------------------------------------------------------------
// The Python types.

struct SpecObject {
  PyObject_HEAD
  Node *root;
  int nodes;
  std::vector<Column> *columns;  // empty columns: the template each parse copies
  Choices *choices;
};

bool plain_key(std::string_view k) {
  for (unsigned char c : k)
    if (c == '"' || c == '\\' || c < 0x20) return false;
  return true;
}

constexpr long kStrict = 256;  // added to a kind: its misfits make the line bad

bool build(PyObject *tree, Node *node, std::vector<Column> &columns, const std::string &path,
           int &nodes) {
  node->id = nodes++;
  if (!PyDict_Check(tree)) {
    PyErr_SetString(PyExc_TypeError, "a spec is a dict of key -> kind (int) or dict");
    return false;
  }
  PyObject *key, *value;
  Py_ssize_t pos = 0;
  while (PyDict_Next(tree, &pos, &key, &value)) {
    Py_ssize_t size;
    const char *name = PyUnicode_AsUTF8AndSize(key, &size);
    if (name == nullptr) return false;
    std::string k(name, static_cast<size_t>(size));
    if (!plain_key(k)) {  // the raw-bytes match of Parser::find relies on it
      PyErr_Format(PyExc_ValueError, "a mapped key may not hold quotes, backslashes or "
                   "control characters: %R", key);
      return false;
    }
    auto child = std::make_unique<Node>();
    std::string child_path = path + "." + k;
    if (PyLong_Check(value)) {
      long code = PyLong_AsLong(value);
      long kind = code & ~kStrict;
      if (code < 0 || kind >= N_KINDS) {
        PyErr_SetString(PyExc_ValueError, "unknown column kind");
        return false;
      }
      child->leaf = static_cast<int>(columns.size());
      Column col;
      col.kind = static_cast<Kind>(kind);
      col.strict = (code & kStrict) != 0;
      col.path = child_path;
      columns.push_back(std::move(col));
    } else if (!build(value, child.get(), columns, child_path, nodes)) {
      return false;
    }
    node->names.push_back(std::make_unique<std::string>(std::move(k)));
    node->index.emplace(std::string_view(*node->names.back()),
                        static_cast<int>(node->children.size()));
    node->children.push_back(std::move(child));
  }
  return true;
}

// The column of the key path `path` (its parts joined by '.'), or -1.
int leaf_of(const Node *root, std::string_view path) {
  const Node *node = root;
  while (true) {
    size_t dot = path.find('.');
    auto found = node->index.find(path.substr(0, dot));
    if (found == node->index.end()) return -1;
    node = node->children[static_cast<size_t>(found->second)].get();
    if (dot == std::string_view::npos) return node->leaf;
    if (node->leaf >= 0) return -1;
    path.remove_prefix(dot + 1);
  }
}

// The readers of `readers` (a sequence of sequences of key paths) as leaf indices, and
// the keys a reader may pass over.
bool build_choices(PyObject *readers, const Node *root, size_t columns, Choices &choices) {
  PyObject *outer = PySequence_Fast(readers, "readers: a sequence of sequences of key paths");
  if (outer == nullptr) return false;
  bool ok = true;
  for (Py_ssize_t i = 0; ok && i < PySequence_Fast_GET_SIZE(outer); ++i) {
    PyObject *inner = PySequence_Fast(PySequence_Fast_GET_ITEM(outer, i),
                                      "a reader: a sequence of key paths");
    if (inner == nullptr) {
      ok = false;
      break;
    }
    std::vector<int> leaves;
    for (Py_ssize_t j = 0; j < PySequence_Fast_GET_SIZE(inner); ++j) {
      PyObject *key = PySequence_Fast_GET_ITEM(inner, j);
      Py_ssize_t size;
      const char *text = PyUnicode_Check(key) ? PyUnicode_AsUTF8AndSize(key, &size) : nullptr;
      int leaf = text ? leaf_of(root, std::string_view(text, static_cast<size_t>(size))) : -1;
      if (leaf < 0) {
        if (!PyErr_Occurred())
          PyErr_Format(PyExc_ValueError, "a reader's key is not a mapped key path: %R", key);
        ok = false;
        break;
      }
      leaves.push_back(leaf);
    }
    Py_DECREF(inner);
    choices.readers.push_back(std::move(leaves));
  }
  Py_DECREF(outer);
  if (!ok) return false;
  // A key first in some reader is always taken when it has a value; the others are rivals.
  std::vector<uint8_t> first(columns, 0);
  for (const std::vector<int> &keys : choices.readers)
    if (!keys.empty()) first[static_cast<size_t>(keys[0])] = 1;
  std::unordered_map<int, size_t> rival_of;
  for (size_t r = 0; r < choices.readers.size(); ++r) {
    const std::vector<int> &keys = choices.readers[r];
    for (size_t k = 1; k < keys.size(); ++k) {
      int leaf = keys[k];
      if (first[static_cast<size_t>(leaf)]) continue;
      auto [at, added] = rival_of.emplace(leaf, choices.rivals.size());
      if (added) choices.rivals.push_back(Rival{leaf, {}});
      choices.rivals[at->second].places.emplace_back(static_cast<int>(r), static_cast<int>(k));
    }
  }
  return true;
}

int Spec_init(SpecObject *self, PyObject *args, PyObject *kwds) {
  static const char *kwlist[] = {"tree", "readers", nullptr};
  PyObject *tree;
  PyObject *readers = nullptr;
  if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|O", const_cast<char **>(kwlist), &tree,
                                   &readers))
    return -1;
  self->root = new Node();
  self->columns = new std::vector<Column>();
  self->choices = new Choices();
  self->nodes = 0;
  if (!build(tree, self->root, *self->columns, "$", self->nodes)) return -1;
  if (readers != nullptr &&
      !build_choices(readers, self->root, self->columns->size(), *self->choices))
    return -1;
  return 0;
}

void Spec_dealloc(SpecObject *self) {
  delete self->root;
  delete self->columns;
  delete self->choices;
  Py_TYPE(self)->tp_free(reinterpret_cast<PyObject *>(self));
}

// A Python object owning one buffer of a finished column (buffer protocol, read-only),
// so pyarrow wraps the memory without a copy; the memory goes back to the pool.
struct BufObject {
  PyObject_HEAD
  Bytes *bytes;
};

PyTypeObject BufType = {PyVarObject_HEAD_INIT(nullptr, 0)};

int Buf_getbuffer(BufObject *self, Py_buffer *view, int flags) {
  return PyBuffer_FillInfo(view, reinterpret_cast<PyObject *>(self), self->bytes->data(),
                           static_cast<Py_ssize_t>(self->bytes->size()), 1, flags);
}

void Buf_dealloc(BufObject *self) {
  pool.give(std::move(*self->bytes));
  delete self->bytes;
  Py_TYPE(self)->tp_free(reinterpret_cast<PyObject *>(self));
}

PyBufferProcs Buf_as_buffer = {reinterpret_cast<getbufferproc>(Buf_getbuffer), nullptr};

PyObject *buffer_of(Bytes &&bytes) {
  BufObject *buf = PyObject_New(BufObject, &BufType);
  if (buf == nullptr) return nullptr;
  buf->bytes = new Bytes(std::move(bytes));
  return reinterpret_cast<PyObject *>(buf);
}

PyObject *bytes_of(const void *data, size_t size) {
  return PyBytes_FromStringAndSize(static_cast<const char *>(data), static_cast<Py_ssize_t>(size));
}

struct Outcome {
  std::vector<Column> cols;
  int64_t rows = 0;
  std::vector<uint8_t> status;  // per line: 0 stored, 1 bad, 2 blank
  std::vector<std::pair<int64_t, std::string>> bad;
  std::vector<std::pair<int64_t, std::string>> notes;  // values kept in extra for their type
  Column extra{JSON, false, "$"};
  std::string error;  // a failure of the whole block (too large)
};

// Touches no Python object and no state of the Spec: runs without the GIL, and several
// threads may parse with one Spec at once.
void parse_block(SpecObject *self, const char *text, size_t size, Outcome &out) {
  out.cols = *self->columns;
  std::vector<Column> &cols = out.cols;
  if (size > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    out.error = "block larger than 2 GiB";
    return;
  }
  int64_t n = 1;
  for (const char *p = text, *end = text + size;
       (p = static_cast<const char *>(std::memchr(p, '\n', static_cast<size_t>(end - p))));
       ++p)
    ++n;  // as many lines as newlines + 1
  if (scratch.size() < cols.size() + 1) scratch.resize(cols.size() + 1);
  for (size_t i = 0; i < cols.size(); ++i) cols[i].reset(&scratch[i], n);
  out.extra.reset(&scratch[cols.size()], n);
  out.status.assign(static_cast<size_t>(n), 0);
  od::parser parser;
  Parser walker(self->root, &cols, self->nodes, self->choices);
  std::string extra;
  Bytes tail;
  int64_t row = 0;
  size_t start = 0;
  for (int64_t i = 0; i < n; ++i) {
    const void *nl = std::memchr(text + start, '\n', size - start);
    size_t stop = nl ? static_cast<size_t>(static_cast<const char *>(nl) - text) : size;
    size_t len = stop - start;
    // simdjson reads up to SIMDJSON_PADDING bytes past a line: the lines after it, or,
    // near the end of the block, a padded copy of the line.
    const char *p = text + start;
    size_t room = size - start;
    start = stop + 1;
    if (len + simdjson::SIMDJSON_PADDING > room) {
      tail.assign(p, p + len);
      tail.resize(len + simdjson::SIMDJSON_PADDING, ' ');
      p = reinterpret_cast<const char *>(tail.data());
      room = tail.size();
    }
    bool blank = true;
    for (size_t j = 0; j < len && blank; ++j)
      blank = p[j] == ' ' || p[j] == '\t' || p[j] == '\r';
    if (blank) {
      out.status[static_cast<size_t>(i)] = 2;
      continue;
    }
    extra.clear();
    walker.begin(row);
    try {
      od::document doc;
      auto err = parser.iterate(p, len, room).get(doc);
      if (err != simdjson::SUCCESS) invalid(simdjson::error_message(err));
      walker.line(doc, extra);
    } catch (const Failure &f) {
      walker.rollback();
      out.status[static_cast<size_t>(i)] = 1;
      out.bad.emplace_back(i, f.message);
      continue;
    } catch (const simdjson::simdjson_error &e) {
      walker.rollback();
      out.status[static_cast<size_t>(i)] = 1;
      out.bad.emplace_back(i, std::string("invalid JSON: ") + e.what());
      continue;
    }
    if (!walker.note.empty()) out.notes.emplace_back(i, walker.note);
    if (!extra.empty()) {
      extra.insert(extra.begin(), '{');
      extra.push_back('}');
      out.extra.put_text(row, extra);
    }
    ++row;
  }
  for (Column &c : cols) c.finish(row);
  out.extra.finish(row);
  out.rows = row;
}

// (validity, offsets, values, null count); None for the buffers of a column without values.
PyObject *column_tuple(Column &c) {
  if (!c.active)
    return Py_BuildValue("(OOOL)", Py_None, Py_None, Py_None, static_cast<long long>(c.nulls));
  PyObject *validity = buffer_of(std::move(c.validity));
  PyObject *offsets = c.is_text() ? buffer_of(std::move(c.offsets)) : (Py_INCREF(Py_None), Py_None);
  PyObject *values = buffer_of(std::move(c.values));
  c.active = false;
  return Py_BuildValue("(NNNL)", validity, offsets, values, static_cast<long long>(c.nulls));
}

PyObject *messages(const std::vector<std::pair<int64_t, std::string>> &items) {
  PyObject *list = PyList_New(static_cast<Py_ssize_t>(items.size()));
  for (size_t i = 0; i < items.size(); ++i) {
    const auto &[line, message] = items[i];
    PyList_SET_ITEM(list, static_cast<Py_ssize_t>(i),
                    Py_BuildValue("(Ls#)", static_cast<long long>(line), message.data(),
                                  static_cast<Py_ssize_t>(message.size())));
  }
  return list;
}

PyObject *Spec_parse(SpecObject *self, PyObject *args) {
  Py_buffer view;
  if (!PyArg_ParseTuple(args, "y*", &view)) return nullptr;
  Outcome out;
  Py_BEGIN_ALLOW_THREADS
  parse_block(self, static_cast<const char *>(view.buf), static_cast<size_t>(view.len), out);
  Py_END_ALLOW_THREADS
  PyBuffer_Release(&view);
  if (!out.error.empty()) {
    for (Column &c : out.cols) c.recycle();
    out.extra.recycle();
    PyErr_SetString(PyExc_ValueError, out.error.c_str());
    return nullptr;
  }
  std::vector<Column> &cols = out.cols;
  PyObject *columns = PyList_New(static_cast<Py_ssize_t>(cols.size()));
  if (columns == nullptr) return nullptr;
  for (size_t i = 0; i < cols.size(); ++i)
    PyList_SET_ITEM(columns, static_cast<Py_ssize_t>(i), column_tuple(cols[i]));
  PyObject *bad = messages(out.bad);
  PyObject *notes = messages(out.notes);
  PyObject *status = bytes_of(out.status.data(), out.status.size());
  PyObject *extra = column_tuple(out.extra);
  return Py_BuildValue("(LNNNNN)", static_cast<long long>(out.rows), columns, extra, status, bad,
                       notes);
}

PyObject *Spec_paths(SpecObject *self, PyObject *) {
  std::vector<Column> &cols = *self->columns;
  PyObject *out = PyList_New(static_cast<Py_ssize_t>(cols.size()));
  for (size_t i = 0; i < cols.size(); ++i)
    PyList_SET_ITEM(out, static_cast<Py_ssize_t>(i),
                    PyUnicode_FromStringAndSize(cols[i].path.data() + 2,
                                                static_cast<Py_ssize_t>(cols[i].path.size() - 2)));
  return out;
}

PyMethodDef Spec_methods[] = {
    {"parse", reinterpret_cast<PyCFunction>(Spec_parse), METH_VARARGS,
     "parse(block) -> (rows, columns, extra, status, bad, notes)"},
    {"paths", reinterpret_cast<PyCFunction>(Spec_paths), METH_NOARGS,
     "The key path of each column, in column order."},
    {nullptr, nullptr, 0, nullptr},
};

PyObject *set_pool_limit(PyObject *, PyObject *arg) {
  Py_ssize_t limit = PyNumber_AsSsize_t(arg, PyExc_OverflowError);
  if (limit < 0) {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "the limit is a number of bytes");
    return nullptr;
  }
  size_t before = pool.set_limit(static_cast<size_t>(limit));
  if (limit == 0) pool.release();
  return PyLong_FromSize_t(before);
}

PyObject *release_pool(PyObject *, PyObject *) {
  pool.release();
  Py_RETURN_NONE;
}

PyObject *pool_bytes(PyObject *, PyObject *) {
  return PyLong_FromSize_t(pool.held());
}

PyObject *parse_time(PyObject *, PyObject *arg) {
  Py_ssize_t size;
  const char *text;
  if (PyUnicode_Check(arg)) {
    text = PyUnicode_AsUTF8AndSize(arg, &size);
    if (text == nullptr) {  // lone surrogates cannot be UTF-8: not a time
      PyErr_Clear();
      Py_RETURN_NONE;
    }
  } else if (PyBytes_Check(arg)) {
    text = PyBytes_AS_STRING(arg);
    size = PyBytes_GET_SIZE(arg);
  } else {
    PyErr_SetString(PyExc_TypeError, "parse_time takes str or bytes");
    return nullptr;
  }
  int64_t us;
  if (!rfc3339_us(std::string_view(text, static_cast<size_t>(size)), us)) Py_RETURN_NONE;
  return PyLong_FromLongLong(us);
}

PyMethodDef module_methods[] = {
    {"set_pool_limit", set_pool_limit, METH_O,
     "set_pool_limit(bytes) -> the previous limit: how much freed column memory to keep for "
     "the next blocks"},
    {"release_pool", release_pool, METH_NOARGS, "Free the column memory kept for reuse."},
    {"pool_bytes", pool_bytes, METH_NOARGS, "Bytes of column memory kept for reuse."},
    {"parse_time", parse_time, METH_O,
     "parse_time(text) -> microseconds since the epoch, or None if text is not a time "
     "by rtclake's rule (RFC 3339 with a required offset)"},
    {nullptr, nullptr, 0, nullptr},
};

PyTypeObject SpecType = {PyVarObject_HEAD_INIT(nullptr, 0)};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_jsoncols",
                          "JSON Lines to Arrow column buffers (simdjson).", -1, module_methods};

}  // namespace

PyMODINIT_FUNC PyInit__jsoncols(void) {
  SpecType.tp_name = "rtclake._jsoncols.Spec";
  SpecType.tp_basicsize = sizeof(SpecObject);
  SpecType.tp_flags = Py_TPFLAGS_DEFAULT;
  SpecType.tp_doc =
      "Spec(tree, readers=()): the mapped key paths of a table and their kinds; readers: "
      "the key paths each reader (a column) takes the first present of, in order";
  SpecType.tp_new = PyType_GenericNew;
  SpecType.tp_init = reinterpret_cast<initproc>(Spec_init);
  SpecType.tp_dealloc = reinterpret_cast<destructor>(Spec_dealloc);
  SpecType.tp_methods = Spec_methods;
  if (PyType_Ready(&SpecType) < 0) return nullptr;
  BufType.tp_name = "rtclake._jsoncols.Buffer";
  BufType.tp_basicsize = sizeof(BufObject);
  BufType.tp_flags = Py_TPFLAGS_DEFAULT;
  BufType.tp_doc = "Memory of one column buffer.";
  BufType.tp_dealloc = reinterpret_cast<destructor>(Buf_dealloc);
  BufType.tp_as_buffer = &Buf_as_buffer;
  if (PyType_Ready(&BufType) < 0) return nullptr;
  PyObject *m = PyModule_Create(&module_def);
  if (m == nullptr) return nullptr;
  Py_INCREF(&SpecType);
  if (PyModule_AddObject(m, "Spec", reinterpret_cast<PyObject *>(&SpecType)) < 0) {
    Py_DECREF(&SpecType);
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
