// JSON Lines to Arrow column buffers, one pass, in C++ (simdjson's DOM parser).
//
// A Spec is a tree of the key paths a lake table maps to typed columns (see
// rtclake/tables.py). Spec.parse(block) parses every line of a block of JSON Lines once
// and fills, per mapped key path, the buffers of one Arrow array (validity bitmap,
// values or offsets + data), and writes the keys no column takes into an `extra` JSON
// object per line (NULL when there are none). A value of the wrong type for its column
// (a string where a number belongs) is kept in `extra` and noted with its JSON path; a
// line that is not a JSON object is reported and left out. Only
// present values cost work: a missing value is a zero validity bit, already there.
// The GIL is released while parsing.

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <simdjson.h>

#include <charconv>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace {

using simdjson::dom::element;
using simdjson::dom::element_type;
using simdjson::dom::object;

// Column kinds, in the order of rtclake.tables.NATIVE_KINDS.
enum Kind : int { STRING = 0, ID, TIME, FLOAT, INT, BOOL, JSON, N_KINDS };

constexpr double kEpochMax = 9223372036854775807.0;  // 2**63 - 1, as rtclake.tables

struct Node {
  int leaf = -1;  // column index, or -1 for an object node
  int id = 0;     // index of this object node, for the walker's per-node guesses
  std::vector<std::unique_ptr<std::string>> names;  // own the keys of `index`
  std::vector<std::unique_ptr<Node>> children;
  std::unordered_map<std::string_view, int> index;  // key -> position in children
};

using Bytes = std::vector<uint8_t>;

// One Arrow array under construction. Its buffers are allocated at its first value, so
// a column no line of the block has costs nothing.
struct Column {
  Kind kind;
  std::string path;  // $.a.b, for error messages
  int64_t capacity = 0;  // rows of the block
  Bytes validity;        // empty until the first value
  Bytes values;          // INT, FLOAT: capacity * 8; BOOL: a bitmap; text kinds: the UTF-8
  Bytes offsets;         // text kinds: (capacity + 1) int32
  int64_t filled = 0;    // text kinds: rows whose end offset is written
  int64_t nulls = 0;

  bool text() const { return kind == STRING || kind == ID || kind == TIME || kind == JSON; }
  bool used() const { return !validity.empty(); }

  void reset(int64_t rows) {
    capacity = rows;
    validity = Bytes();
    values = Bytes();
    offsets = Bytes();
    filled = 0;
    nulls = 0;
  }

  void ensure() {
    if (used()) return;
    size_t bitmap = static_cast<size_t>((capacity + 7) / 8);
    validity.assign(std::max<size_t>(bitmap, 1), 0);
    if (kind == INT || kind == FLOAT) values.assign(static_cast<size_t>(capacity) * 8, 0);
    if (kind == BOOL) values.assign(std::max<size_t>(bitmap, 1), 0);
    if (text()) offsets.assign((static_cast<size_t>(capacity) + 1) * 4, 0);
  }

  int32_t *offs() { return reinterpret_cast<int32_t *>(offsets.data()); }

  static void set_bit(Bytes &bits, int64_t i, bool on) {
    uint8_t mask = static_cast<uint8_t>(1u << (i % 8));
    if (on)
      bits[static_cast<size_t>(i / 8)] |= mask;
    else
      bits[static_cast<size_t>(i / 8)] &= static_cast<uint8_t>(~mask);
  }

  void put_int(int64_t row, int64_t v) {
    ensure();
    std::memcpy(values.data() + row * 8, &v, 8);
    set_bit(validity, row, true);
  }
  void put_float(int64_t row, double v) {
    ensure();
    std::memcpy(values.data() + row * 8, &v, 8);
    set_bit(validity, row, true);
  }
  void put_bool(int64_t row, bool v) {
    ensure();
    set_bit(values, row, v);
    set_bit(validity, row, true);
  }

  void put_text(int64_t row, std::string_view text) {
    ensure();
    int32_t *o = offs();
    int32_t end = static_cast<int32_t>(values.size());
    if (filled > row) {  // the key came twice in one line: the last one counts
      end = o[row];
      values.resize(static_cast<size_t>(end));
      filled = row;
    }
    for (int64_t i = filled; i < row; ++i) o[i + 1] = end;
    values.insert(values.end(), text.begin(), text.end());
    o[row + 1] = static_cast<int32_t>(values.size());
    filled = row + 1;
    set_bit(validity, row, true);
  }

  // Undo whatever this column holds for `row` (a null came later, or the line is bad).
  void clear(int64_t row) {
    if (!used()) return;
    set_bit(validity, row, false);
    if (text() && filled > row) {
      values.resize(static_cast<size_t>(offs()[row]));
      filled = row;
    }
  }

  void finish(int64_t rows) {
    if (!used()) {
      nulls = rows;
      return;
    }
    if (text()) {
      int32_t *o = offs();
      int32_t end = static_cast<int32_t>(values.size());
      for (int64_t i = filled; i < rows; ++i) o[i + 1] = end;
      filled = rows;
      offsets.resize((static_cast<size_t>(rows) + 1) * 4);
    } else if (kind != BOOL) {
      values.resize(static_cast<size_t>(rows) * 8);
    }
    int64_t set = 0;
    size_t full = static_cast<size_t>(rows / 8);
    for (size_t i = 0; i < full; ++i) set += __builtin_popcount(validity[i]);
    for (int64_t i = static_cast<int64_t>(full) * 8; i < rows; ++i)
      set += (validity[static_cast<size_t>(i / 8)] >> (i % 8)) & 1;
    nulls = rows - set;
  }
};

const char *type_name(element_type t) {
  switch (t) {
    case element_type::ARRAY: return "array";
    case element_type::OBJECT: return "object";
    case element_type::INT64:
    case element_type::UINT64: return "int";
    case element_type::DOUBLE: return "float";
    case element_type::STRING: return "str";
    case element_type::BOOL: return "bool";
    case element_type::NULL_VALUE: return "null";
  }
  return "value";
}

// RFC 3339 date-time (the forms msgspec's datetime accepts): YYYY-MM-DD, 'T' or ' ',
// HH:MM:SS, optional fraction, optional 'Z' or +HH:MM / -HH:MM.
bool rfc3339(std::string_view s) {
  auto digits = [&](size_t at, size_t n) {
    if (at + n > s.size()) return false;
    for (size_t i = at; i < at + n; ++i)
      if (s[i] < '0' || s[i] > '9') return false;
    return true;
  };
  if (s.size() < 19 || !digits(0, 4) || s[4] != '-' || !digits(5, 2) || s[7] != '-' ||
      !digits(8, 2))
    return false;
  if (s[10] != 'T' && s[10] != 't' && s[10] != ' ') return false;
  if (!digits(11, 2) || s[13] != ':' || !digits(14, 2) || s[16] != ':' || !digits(17, 2))
    return false;
  size_t i = 19;
  if (i < s.size() && s[i] == '.') {
    size_t start = ++i;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i;
    if (i == start) return false;
  }
  if (i == s.size()) return true;
  if ((s[i] == 'Z' || s[i] == 'z') && i + 1 == s.size()) return true;
  if ((s[i] == '+' || s[i] == '-') && i + 6 == s.size() && digits(i + 1, 2) && s[i + 3] == ':' &&
      digits(i + 4, 2))
    return true;
  return false;
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

template <typename T>
void append_number(std::string &out, T value) {
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, value);
  out.append(buf, static_cast<size_t>(res.ptr - buf));
}

struct Failure {
  std::string message;
};

class Parser {
 public:
  Parser(Node *root, std::vector<Column> *columns, int nodes) : root_(root), cols_(columns) {
    guess_.resize(static_cast<size_t>(nodes));
  }

  // Parse one line into `row`; on a bad value, raise Failure (the caller rolls back).
  void line(element doc, int64_t row, std::string &extra) {
    row_ = row;  // first: a rollback after a failure below must not touch the last line
    touched_.clear();
    note.clear();
    object obj;
    if (doc.get(obj) != simdjson::SUCCESS)
      throw Failure{std::string("Expected `object`, got `") + type_name(doc.type()) + "`"};
    walk(obj, root_, extra, "$");
  }

  void rollback() {
    for (int i : touched_) (*cols_)[static_cast<size_t>(i)].clear(row_);
  }

 private:
  Node *root_;
  std::vector<Column> *cols_;
  int64_t row_ = 0;
  std::vector<int> touched_;
  std::string text_;
  // Per object node: after child i (slot i + 1; slot 0 is the start), the child that
  // came next last time. Lines of one kind repeat their key order, so most keys are
  // found by one comparison instead of a hash lookup.
  std::vector<std::vector<int>> guess_;

  Node *find(Node *node, int &prev, std::string_view key) {
    std::vector<int> &g = guess_[static_cast<size_t>(node->id)];
    if (g.empty()) g.assign(node->children.size() + 1, -1);
    int want = g[static_cast<size_t>(prev + 1)];
    if (want >= 0 && *node->names[static_cast<size_t>(want)] == key) {
      prev = want;
      return node->children[static_cast<size_t>(want)].get();
    }
    auto found = node->index.find(key);
    if (found == node->index.end()) return nullptr;
    g[static_cast<size_t>(prev + 1)] = found->second;
    prev = found->second;
    return node->children[static_cast<size_t>(found->second)].get();
  }

  // A value of the wrong type for its column stays in `extra` (nothing is dropped); the
  // first such value of a line is noted for the caller's log.
  void misfit(std::string &extra, std::string_view key, element value, const std::string &why) {
    if (note.empty()) note = why;
    member(extra, key);
    extra += simdjson::to_string(value);
  }

  static void member(std::string &extra, std::string_view key) {
    if (!extra.empty()) extra.push_back(',');
    escape_into(extra, key);
    extra.push_back(':');
  }

  // Writes the unmapped keys of `obj` into `extra` as the members of an object (no braces).
  void walk(object obj, Node *node, std::string &extra, const std::string &path) {
    int prev = -1;
    for (auto field : obj) {
      Node *child = find(node, prev, field.key);
      if (child == nullptr) {
        member(extra, field.key);
        extra += simdjson::to_string(field.value);
        continue;
      }
      if (child->leaf >= 0) {
        Column &col = (*cols_)[static_cast<size_t>(child->leaf)];
        touched_.push_back(child->leaf);
        const char *why = put(col, field.value);
        if (why != nullptr) {
          col.clear(row_);
          misfit(extra, field.key, field.value, std::string(why) + " - at `" + col.path + "`");
        }
        continue;
      }
      element_type t = field.value.type();
      if (t == element_type::NULL_VALUE) continue;
      std::string sub_path = path + "." + std::string(field.key);
      if (t != element_type::OBJECT) {
        misfit(extra, field.key, field.value,
               std::string("Expected `object | null`, got `") + type_name(t) + "` - at `" +
                   sub_path + "`");
        continue;
      }
      std::string sub;
      walk(object(field.value), child, sub, sub_path);
      if (!sub.empty()) {
        member(extra, field.key);
        extra.push_back('{');
        extra += sub;
        extra.push_back('}');
      }
    }
  }

  // Stores `value` in its column; nullptr, or why the column cannot take it.
  const char *put(Column &col, element value) {
    element_type t = value.type();
    if (t == element_type::NULL_VALUE) {
      col.clear(row_);  // an earlier copy of the key may have had a value
      return nullptr;
    }
    switch (col.kind) {
      case STRING:
        if (t != element_type::STRING) return "Expected `str | null`";
        col.put_text(row_, std::string_view(value));
        return nullptr;
      case ID:
        if (t == element_type::STRING) {
          col.put_text(row_, std::string_view(value));
          return nullptr;
        }
        if (t != element_type::INT64 && t != element_type::UINT64)
          return "Expected `str | int | null`";
        text_.clear();
        if (t == element_type::INT64)
          append_number(text_, int64_t(value));
        else
          append_number(text_, uint64_t(value));
        col.put_text(row_, text_);
        return nullptr;
      case TIME:
        text_.clear();
        if (t == element_type::STRING) {
          std::string_view s(value);
          if (!rfc3339(s)) return "Invalid RFC3339 encoded datetime";
          col.put_text(row_, s);
          return nullptr;
        }
        if (t == element_type::INT64 && int64_t(value) >= 0)
          append_number(text_, int64_t(value));
        else if (t == element_type::DOUBLE && double(value) >= 0 && double(value) < kEpochMax)
          append_number(text_, double(value));
        else if (t == element_type::INT64 || t == element_type::UINT64 || t == element_type::DOUBLE)
          return "Expected a time in [0, 2**63)";
        else
          return "Expected `datetime | int | float | null`";
        col.put_text(row_, text_);
        return nullptr;
      case FLOAT:
        if (t == element_type::DOUBLE)
          col.put_float(row_, double(value));
        else if (t == element_type::INT64)
          col.put_float(row_, static_cast<double>(int64_t(value)));
        else if (t == element_type::UINT64)
          col.put_float(row_, static_cast<double>(uint64_t(value)));
        else
          return "Expected `float | null`";
        return nullptr;
      case INT:
        if (t == element_type::UINT64) return "Integer out of range for int64";
        if (t != element_type::INT64) return "Expected `int | null`";
        col.put_int(row_, int64_t(value));
        return nullptr;
      case BOOL:
        if (t != element_type::BOOL) return "Expected `bool | null`";
        col.put_bool(row_, bool(value));
        return nullptr;
      case JSON:
        col.put_text(row_, simdjson::to_string(value));
        return nullptr;
      case N_KINDS:
        break;
    }
    return "unknown column kind";
  }

 public:
  std::string note;  // the first misfit of the current line
};

// ---------------------------------------------------------------------------------
// The Python type.

struct SpecObject {
  PyObject_HEAD
  Node *root;
  int nodes;
  std::vector<Column> *columns;  // empty columns: the template each parse copies
};

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
    auto child = std::make_unique<Node>();
    std::string child_path = path + "." + k;
    if (PyLong_Check(value)) {
      long kind = PyLong_AsLong(value);
      if (kind < 0 || kind >= N_KINDS) {
        PyErr_SetString(PyExc_ValueError, "unknown column kind");
        return false;
      }
      child->leaf = static_cast<int>(columns.size());
      Column col;
      col.kind = static_cast<Kind>(kind);
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

int Spec_init(SpecObject *self, PyObject *args, PyObject *kwds) {
  static const char *kwlist[] = {"tree", nullptr};
  PyObject *tree;
  if (!PyArg_ParseTupleAndKeywords(args, kwds, "O", const_cast<char **>(kwlist), &tree))
    return -1;
  self->root = new Node();
  self->columns = new std::vector<Column>();
  self->nodes = 0;
  return build(tree, self->root, *self->columns, "$", self->nodes) ? 0 : -1;
}

void Spec_dealloc(SpecObject *self) {
  delete self->root;
  delete self->columns;
  Py_TYPE(self)->tp_free(reinterpret_cast<PyObject *>(self));
}

// A Python object owning one buffer of a finished column (buffer protocol, read-only),
// so pyarrow wraps the memory without a copy.
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
  Column extra{JSON, "$"};
  std::string error;  // a failure of the whole block (too large)
};

// Touches no Python object and no state of the Spec: runs without the GIL, and several
// threads may parse with one Spec at once.
void parse_block(SpecObject *self, const char *text, size_t size, Outcome &out) {
  out.cols = *self->columns;
  std::vector<Column> &cols = out.cols;
  std::vector<std::pair<size_t, size_t>> lines;
  size_t longest = 0;
  for (size_t start = 0; start <= size;) {
    const void *nl = std::memchr(text + start, '\n', size - start);
    size_t end = nl ? static_cast<size_t>(static_cast<const char *>(nl) - text) : size;
    lines.emplace_back(start, end - start);  // as many lines as newlines + 1
    longest = std::max(longest, end - start);
    start = end + 1;
    if (!nl) break;
  }
  int64_t n = static_cast<int64_t>(lines.size());
  for (Column &c : cols) c.reset(n);
  out.extra.reset(n);
  out.status.assign(static_cast<size_t>(n), 0);
  if (size > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    out.error = "block larger than 2 GiB";
    return;
  }
  simdjson::dom::parser parser;
  if (parser.allocate(std::max<size_t>(longest, 64)) != simdjson::SUCCESS) {
    out.error = "cannot allocate the JSON parser";
    return;
  }
  Parser walker(self->root, &cols, self->nodes);
  std::string extra;
  Bytes tail;
  int64_t row = 0;
  for (int64_t i = 0; i < n; ++i) {
    auto [start, len] = lines[static_cast<size_t>(i)];
    // simdjson reads up to SIMDJSON_PADDING bytes past a line: the lines after it, or,
    // near the end of the block, a padded copy of the line.
    const uint8_t *p = reinterpret_cast<const uint8_t *>(text) + start;
    if (start + len + simdjson::SIMDJSON_PADDING > size) {
      tail.assign(p, p + len);
      tail.resize(len + simdjson::SIMDJSON_PADDING, 0);
      p = tail.data();
    }
    bool blank = true;
    for (size_t j = 0; j < len && blank; ++j)
      blank = p[j] == ' ' || p[j] == '\t' || p[j] == '\r';
    if (blank) {
      out.status[static_cast<size_t>(i)] = 2;
      continue;
    }
    element doc;
    auto err = parser.parse(p, len, false).get(doc);
    if (err != simdjson::SUCCESS) {
      out.status[static_cast<size_t>(i)] = 1;
      out.bad.emplace_back(i, std::string("invalid JSON: ") + simdjson::error_message(err));
      continue;
    }
    extra.clear();
    try {
      walker.line(doc, row, extra);
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
  if (!c.used()) return Py_BuildValue("(OOOL)", Py_None, Py_None, Py_None, static_cast<long long>(c.nulls));
  PyObject *validity = buffer_of(std::move(c.validity));
  PyObject *offsets = c.text() ? buffer_of(std::move(c.offsets)) : (Py_INCREF(Py_None), Py_None);
  PyObject *values = buffer_of(std::move(c.values));
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

PyTypeObject SpecType = {PyVarObject_HEAD_INIT(nullptr, 0)};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_jsoncols",
                          "JSON Lines to Arrow column buffers (simdjson).", -1, nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__jsoncols(void) {
  SpecType.tp_name = "rtclake._jsoncols.Spec";
  SpecType.tp_basicsize = sizeof(SpecObject);
  SpecType.tp_flags = Py_TPFLAGS_DEFAULT;
  SpecType.tp_doc = "Spec(tree): the mapped key paths of a table and their kinds.";
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
