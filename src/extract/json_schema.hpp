// A small JSON Schema (draft 2020-12) validator for the subset of keywords MedVision's schemas use.
// Debian packages no validator for nlohmann::json, so this one is written here; it is driven by the schema
// document itself (docs/schema.json for extractions).
//
// Supported assertions: type, enum, const, properties, required, additionalProperties, items, minItems,
// maxItems, minLength, maxLength (in code points), pattern (PCRE2, unanchored as the spec says), minimum,
// maximum, and local references ($ref to "#/..." JSON pointers, $defs). Annotations are accepted and
// ignored: $schema, $id, $comment, title, description, examples, default, format, and any "x-" keyword.
// Any other keyword makes the schema itself invalid, so a schema never silently loses a check.
//
// Error messages name the path in the instance ("medications[2].route: expected string, got number") but
// never echo the instance's values: documents are protected health information.
#pragma once
#include <cstddef>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace mv {

class JsonSchema {
 public:
  // Compiles `schema`; throws mv::Error(kInvalidInput) naming `name` when the schema is malformed or uses
  // an unsupported keyword.
  JsonSchema(const nlohmann::json& schema, std::string name);
  ~JsonSchema();
  JsonSchema(JsonSchema&&) noexcept;
  JsonSchema& operator=(JsonSchema&&) noexcept;
  JsonSchema(const JsonSchema&) = delete;
  JsonSchema& operator=(const JsonSchema&) = delete;

  // Every violation (up to max_errors), in document order; empty when the instance is valid.
  std::vector<std::string> validate(const nlohmann::json& instance, std::size_t max_errors = 50) const;

  const std::string& name() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mv
