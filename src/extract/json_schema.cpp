#include "extract/json_schema.hpp"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <cmath>
#include <map>
#include <optional>
#include <set>

#include "core/error.hpp"

namespace mv {

namespace {

using nlohmann::json;

enum TypeBit : unsigned {
  kNull = 1,
  kBoolean = 2,
  kObject = 4,
  kArray = 8,
  kNumber = 16,
  kInteger = 32,
  kString = 64,
};

unsigned type_bit(const std::string& name) {
  if (name == "null") return kNull;
  if (name == "boolean") return kBoolean;
  if (name == "object") return kObject;
  if (name == "array") return kArray;
  if (name == "number") return kNumber;
  if (name == "integer") return kInteger;
  if (name == "string") return kString;
  return 0;
}

std::string type_names(unsigned mask) {
  static const std::pair<unsigned, const char*> kNames[] = {
      {kNull, "null"},     {kBoolean, "boolean"}, {kObject, "object"}, {kArray, "array"},
      {kNumber, "number"}, {kInteger, "integer"}, {kString, "string"}};
  std::string out;
  for (const auto& [bit, name] : kNames) {
    if ((mask & bit) == 0) continue;
    if (!out.empty()) out += " or ";
    out += name;
  }
  return out;
}

bool is_integral(const json& v) {
  if (v.is_number_integer()) return true;
  if (!v.is_number_float()) return false;
  const double d = v.get<double>();
  return std::isfinite(d) && std::floor(d) == d;
}

const char* instance_type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::boolean:
      return "boolean";
    case json::value_t::object:
      return "object";
    case json::value_t::array:
      return "array";
    case json::value_t::string:
      return "string";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
      return "integer";
    case json::value_t::number_float:
      return is_integral(v) ? "integer" : "number";
    default:
      return "unknown";
  }
}

bool matches_type(const json& v, unsigned mask) {
  switch (v.type()) {
    case json::value_t::null:
      return (mask & kNull) != 0;
    case json::value_t::boolean:
      return (mask & kBoolean) != 0;
    case json::value_t::object:
      return (mask & kObject) != 0;
    case json::value_t::array:
      return (mask & kArray) != 0;
    case json::value_t::string:
      return (mask & kString) != 0;
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
    case json::value_t::number_float:
      return (mask & kNumber) != 0 || ((mask & kInteger) != 0 && is_integral(v));
    default:
      return false;
  }
}

std::size_t utf8_length(const std::string& s) {
  std::size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80 ? 1 : 0;
  return n;
}

std::string child_path(const std::string& path, const std::string& key) {
  std::string k = key.size() > 64 ? key.substr(0, 64) + "..." : key;
  return path.empty() ? k : path + "." + k;
}

std::string shown(const std::string& path) { return path.empty() ? "(root)" : path; }

struct PatternDeleter {
  void operator()(pcre2_code* code) const { pcre2_code_free(code); }
};

}  // namespace

struct JsonSchema::Impl {
  struct Node {
    bool always = true;  // boolean schema: true accepts everything, false rejects everything
    bool is_boolean = false;
    unsigned types = 0;  // 0: no type keyword
    std::optional<std::vector<json>> enum_values;
    std::optional<json> const_value;
    std::map<std::string, const Node*> properties;
    std::vector<std::string> required;
    const Node* additional = nullptr;  // additionalProperties schema (boolean schemas included)
    const Node* items = nullptr;
    std::optional<std::size_t> min_items, max_items, min_length, max_length;
    std::optional<double> minimum, maximum;
    std::unique_ptr<pcre2_code, PatternDeleter> pattern;
    std::string pattern_text;
    const Node* ref = nullptr;
  };

  std::string name;
  json root;
  std::map<std::string, std::unique_ptr<Node>> nodes;  // by JSON pointer into root
  const Node* top = nullptr;
  pcre2_match_context* match_context = nullptr;

  ~Impl() {
    if (match_context != nullptr) pcre2_match_context_free(match_context);
  }

  [[noreturn]] void bad(const std::string& where, const std::string& what) const {
    fail(Errc::kInvalidInput, "schema {}: at {}: {}", name, where.empty() ? "/" : where, what);
  }

  static std::string escape_token(const std::string& key) {
    std::string out;
    for (char c : key) {
      if (c == '~')
        out += "~0";
      else if (c == '/')
        out += "~1";
      else
        out += c;
    }
    return out;
  }

  std::size_t count_of(const json& v, const std::string& where, const char* key) const {
    if (!v.is_number_integer() && !v.is_number_unsigned())
      bad(where, std::string(key) + " must be an integer");
    if (v.is_number_integer() && v.get<std::int64_t>() < 0) bad(where, std::string(key) + " must be >= 0");
    return v.get<std::size_t>();
  }

  const Node* compile(const std::string& pointer) {
    if (auto it = nodes.find(pointer); it != nodes.end()) return it->second.get();
    const json* s = nullptr;
    try {
      s = &root.at(json::json_pointer(pointer));
    } catch (const json::exception&) {
      bad(pointer, "reference target does not exist");
    }
    auto owned = std::make_unique<Node>();
    Node* node = owned.get();
    nodes.emplace(pointer, std::move(owned));  // before children: references may be recursive

    if (s->is_boolean()) {
      node->is_boolean = true;
      node->always = s->get<bool>();
      return node;
    }
    if (!s->is_object()) bad(pointer, "a schema must be an object or a boolean");

    static const std::set<std::string> kAnnotations = {"$schema",     "$id",      "$comment", "title",
                                                       "description", "examples", "default",  "format"};
    for (const auto& [key, value] : s->items()) {
      const std::string at = pointer + "/" + escape_token(key);
      if (kAnnotations.count(key) != 0 || key.rfind("x-", 0) == 0) continue;
      if (key == "$defs") {
        if (!value.is_object()) bad(at, "$defs must be an object");
        for (const auto& [def_name, def] : value.items()) compile(at + "/" + escape_token(def_name));
      } else if (key == "type") {
        std::vector<std::string> names;
        if (value.is_string())
          names.push_back(value.get<std::string>());
        else if (value.is_array())
          for (const auto& n : value) {
            if (!n.is_string()) bad(at, "type names must be strings");
            names.push_back(n.get<std::string>());
          }
        else
          bad(at, "type must be a string or an array of strings");
        for (const auto& n : names) {
          const unsigned bit = type_bit(n);
          if (bit == 0) bad(at, "unknown type \"" + n + "\"");
          node->types |= bit;
        }
      } else if (key == "enum") {
        if (!value.is_array() || value.empty()) bad(at, "enum must be a non-empty array");
        node->enum_values = value.get<std::vector<json>>();
      } else if (key == "const") {
        node->const_value = value;
      } else if (key == "properties") {
        if (!value.is_object()) bad(at, "properties must be an object");
        for (const auto& [prop, sub] : value.items()) {
          (void)sub;
          node->properties[prop] = compile(at + "/" + escape_token(prop));
        }
      } else if (key == "required") {
        if (!value.is_array()) bad(at, "required must be an array");
        for (const auto& r : value) {
          if (!r.is_string()) bad(at, "required entries must be strings");
          node->required.push_back(r.get<std::string>());
        }
      } else if (key == "additionalProperties") {
        node->additional = compile(at);
      } else if (key == "items") {
        node->items = compile(at);
      } else if (key == "minItems") {
        node->min_items = count_of(value, at, "minItems");
      } else if (key == "maxItems") {
        node->max_items = count_of(value, at, "maxItems");
      } else if (key == "minLength") {
        node->min_length = count_of(value, at, "minLength");
      } else if (key == "maxLength") {
        node->max_length = count_of(value, at, "maxLength");
      } else if (key == "minimum" || key == "maximum") {
        if (!value.is_number()) bad(at, key + " must be a number");
        (key == "minimum" ? node->minimum : node->maximum) = value.get<double>();
      } else if (key == "pattern") {
        if (!value.is_string()) bad(at, "pattern must be a string");
        node->pattern_text = value.get<std::string>();
        int err = 0;
        PCRE2_SIZE offset = 0;
        pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(node->pattern_text.data()),
                                         node->pattern_text.size(), PCRE2_UTF, &err, &offset, nullptr);
        if (code == nullptr) {
          PCRE2_UCHAR msg[256];
          pcre2_get_error_message(err, msg, sizeof msg);
          bad(at,
              fmt::format("invalid pattern at offset {}: {}", offset, reinterpret_cast<const char*>(msg)));
        }
        node->pattern.reset(code);
      } else if (key == "$ref") {
        if (!value.is_string()) bad(at, "$ref must be a string");
        const std::string ref = value.get<std::string>();
        if (ref.empty() || ref[0] != '#') bad(at, "only local references (#/...) are supported: " + ref);
        node->ref = compile(ref.substr(1));
      } else {
        bad(at, "unsupported keyword \"" + key + "\"");
      }
    }
    return node;
  }

  void check(const Node& node, const json& v, const std::string& path, std::vector<std::string>& errors,
             std::size_t max_errors) const {
    auto add = [&](std::string message) {
      if (errors.size() < max_errors) errors.push_back(shown(path) + ": " + std::move(message));
    };
    if (errors.size() >= max_errors) return;
    if (node.is_boolean) {
      if (!node.always) add("no value is allowed here");
      return;
    }
    if (node.ref != nullptr) check(*node.ref, v, path, errors, max_errors);
    if (node.types != 0 && !matches_type(v, node.types)) {
      add("expected " + type_names(node.types) + ", got " + instance_type_name(v));
      return;  // the other keywords would only repeat the problem
    }
    if (node.const_value && v != *node.const_value) add("must be " + node.const_value->dump());
    if (node.enum_values) {
      bool found = false;
      for (const auto& e : *node.enum_values) found = found || e == v;
      if (!found) {
        std::string allowed;
        for (const auto& e : *node.enum_values) allowed += (allowed.empty() ? "" : ", ") + e.dump();
        add("not one of " + allowed);
      }
    }
    if (v.is_string()) {
      const auto& s = v.get_ref<const std::string&>();
      const std::size_t n = utf8_length(s);
      if (node.min_length && n < *node.min_length)
        add(fmt::format("shorter than {} characters", *node.min_length));
      if (node.max_length && n > *node.max_length)
        add(fmt::format("longer than {} characters", *node.max_length));
      if (node.pattern) {
        pcre2_match_data* md = pcre2_match_data_create_from_pattern(node.pattern.get(), nullptr);
        const int rc = pcre2_match(node.pattern.get(), reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), 0, 0,
                                   md, match_context);
        pcre2_match_data_free(md);
        if (rc == PCRE2_ERROR_NOMATCH)
          add("does not match the pattern " + node.pattern_text);
        else if (rc < 0)
          add("cannot be matched against " + node.pattern_text + " (invalid UTF-8 or too complex)");
      }
    }
    if (v.is_number()) {
      const double d = v.get<double>();
      if (node.minimum && !(d >= *node.minimum)) add(fmt::format("must be >= {}", *node.minimum));
      if (node.maximum && !(d <= *node.maximum)) add(fmt::format("must be <= {}", *node.maximum));
    }
    if (v.is_array()) {
      if (node.min_items && v.size() < *node.min_items)
        add(fmt::format("expected at least {} items, got {}", *node.min_items, v.size()));
      if (node.max_items && v.size() > *node.max_items)
        add(fmt::format("expected at most {} items, got {}", *node.max_items, v.size()));
      if (node.items != nullptr)
        for (std::size_t i = 0; i < v.size() && errors.size() < max_errors; ++i)
          check(*node.items, v[i], fmt::format("{}[{}]", path, i), errors, max_errors);
    }
    if (v.is_object()) {
      for (const auto& r : node.required)
        if (!v.contains(r)) add("missing required property \"" + r + "\"");
      for (const auto& [key, value] : v.items()) {
        if (errors.size() >= max_errors) break;
        if (auto it = node.properties.find(key); it != node.properties.end()) {
          check(*it->second, value, child_path(path, key), errors, max_errors);
        } else if (node.additional != nullptr) {
          if (node.additional->is_boolean && !node.additional->always)
            add("unexpected property \"" + (key.size() > 64 ? key.substr(0, 64) + "..." : key) + "\"");
          else
            check(*node.additional, value, child_path(path, key), errors, max_errors);
        }
      }
    }
  }
};

JsonSchema::JsonSchema(const nlohmann::json& schema, std::string name) : impl_(std::make_unique<Impl>()) {
  impl_->name = std::move(name);
  impl_->root = schema;
  impl_->match_context = pcre2_match_context_create(nullptr);
  if (impl_->match_context == nullptr) fail(Errc::kInternal, "schema {}: out of memory", impl_->name);
  pcre2_set_match_limit(impl_->match_context, 1'000'000);
  impl_->top = impl_->compile("");
}

JsonSchema::~JsonSchema() = default;
JsonSchema::JsonSchema(JsonSchema&&) noexcept = default;
JsonSchema& JsonSchema::operator=(JsonSchema&&) noexcept = default;

std::vector<std::string> JsonSchema::validate(const nlohmann::json& instance, std::size_t max_errors) const {
  std::vector<std::string> errors;
  impl_->check(*impl_->top, instance, "", errors, max_errors);
  return errors;
}

const std::string& JsonSchema::name() const { return impl_->name; }

}  // namespace mv
