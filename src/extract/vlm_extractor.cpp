#include "extract/vlm_extractor.hpp"

#include <cctype>
#include <mutex>

#include "core/error.hpp"
#include "core/log.hpp"
#include "data/synth.hpp"
#include "extract/ocr_extractor.hpp"
#include "model/qwen25vl/generator.hpp"
#include "model/qwen25vl/model.hpp"
#include "text/chat_template.hpp"
#include "text/tokenizer.hpp"
#include "vision/preprocess.hpp"

namespace mv::extract {

nlohmann::json repair_model_json(std::string_view text) {
  std::string s(text);
  // Code fences: keep what is inside the first fence.
  if (auto f = s.find("```"); f != std::string::npos) {
    auto nl = s.find('\n', f);
    auto close = nl == std::string::npos ? std::string::npos : s.find("```", nl);
    s = nl == std::string::npos
            ? ""
            : s.substr(nl + 1, close == std::string::npos ? std::string::npos : close - nl - 1);
  }
  auto start = s.find('{');
  if (start == std::string::npos) fail(Errc::kInvalidInput, "model output is not JSON: no object found");
  s = s.substr(start);
  // Walk the text, tracking strings and nesting; cut at the end of the outermost object, or close what a
  // truncated answer left open.
  std::vector<char> stack;
  bool in_str = false, esc = false;
  std::size_t end = std::string::npos;
  std::size_t last_complete = 0;  // position after the last complete value inside a container
  for (std::size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (in_str) {
      if (esc)
        esc = false;
      else if (c == '\\')
        esc = true;
      else if (c == '"')
        in_str = false;
      continue;
    }
    if (c == '"')
      in_str = true;
    else if (c == '{' || c == '[')
      stack.push_back(c);
    else if (c == '}' || c == ']') {
      if (stack.empty()) break;
      stack.pop_back();
      last_complete = i + 1;
      if (stack.empty()) {
        end = i + 1;
        break;
      }
    } else if (c == ',') {
      last_complete = i;
    }
  }
  std::string candidate;
  if (end != std::string::npos) {
    candidate = s.substr(0, end);
  } else {
    // Truncated: cut back to the last complete element, then close the containers still open there.
    std::string cut = s.substr(0, last_complete);
    while (!cut.empty() && (std::isspace(static_cast<unsigned char>(cut.back())) || cut.back() == ','))
      cut.pop_back();
    std::vector<char> st;
    bool q = false, e2 = false;
    for (char c : cut) {
      if (q) {
        if (e2)
          e2 = false;
        else if (c == '\\')
          e2 = true;
        else if (c == '"')
          q = false;
        continue;
      }
      if (c == '"')
        q = true;
      else if (c == '{' || c == '[')
        st.push_back(c);
      else if ((c == '}' || c == ']') && !st.empty())
        st.pop_back();
    }
    // A dangling key ("key": with no value, or "key") is dropped.
    while (!cut.empty() && (cut.back() == ':' || cut.back() == ',')) cut.pop_back();
    candidate = cut;
    for (auto it = st.rbegin(); it != st.rend(); ++it) candidate += *it == '{' ? '}' : ']';
  }
  try {
    return nlohmann::json::parse(candidate);
  } catch (const nlohmann::json::exception& e) {
    fail(Errc::kInvalidInput, "model output is not JSON (after repair): {}", e.what());
  }
}

namespace {

std::string squash(std::string_view s) {
  std::string out;
  for (char c : s)
    if (!std::isspace(static_cast<unsigned char>(c)))
      out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

template <typename T>
void verify_items(std::vector<T>& items, const std::vector<std::string>& page_text, int& count,
                  const std::function<std::vector<std::string>(const T&)>& values) {
  for (auto& it : items) {
    if (!it.provenance) it.provenance = Provenance{};
    int page = 1;
    bool ok = true;
    for (const auto& v : values(it)) {
      std::string q = squash(v);
      if (!q.empty() && page_text[page - 1].find(q) == std::string::npos) ok = false;
    }
    it.provenance->verified = ok;
    ++count;
  }
}

}  // namespace

int verify_against_ocr(Extraction& e, const std::vector<OcrPage>& pages) {
  // Model answers carry no reliable page number: a value counts as found when it is on any page.
  if (pages.empty()) return 0;
  std::string all;
  for (const auto& p : pages) all += squash(p.text());
  std::vector<std::string> text{all};
  int n = 0;
  auto opt = [](std::vector<std::string>& v, const std::optional<std::string>& o) {
    if (o) v.push_back(*o);
  };
  verify_items<Diagnosis>(e.diagnoses, text, n, [&](const Diagnosis& d) {
    std::vector<std::string> v{d.text};
    opt(v, d.icd10);
    return v;
  });
  verify_items<Medication>(e.medications, text, n, [&](const Medication& m) {
    std::vector<std::string> v{m.name};
    opt(v, m.strength), opt(v, m.dose), opt(v, m.route), opt(v, m.frequency), opt(v, m.duration);
    return v;
  });
  verify_items<Lab>(e.labs, text, n, [&](const Lab& l) {
    std::vector<std::string> v{l.test, l.value};
    opt(v, l.unit), opt(v, l.reference_range);
    return v;
  });
  verify_items<Vital>(e.vitals, text, n, [&](const Vital& x) {
    return std::vector<std::string>{x.name, x.value};
  });
  verify_items<Allergy>(e.allergies, text, n, [&](const Allergy& a) {
    std::vector<std::string> v{a.substance};
    opt(v, a.reaction);
    return v;
  });
  verify_items<Procedure>(e.procedures, text, n,
                          [&](const Procedure& p) { return std::vector<std::string>{p.name}; });
  verify_items<Immunization>(e.immunizations, text, n, [&](const Immunization& i) {
    std::vector<std::string> v{i.vaccine};
    opt(v, i.lot);
    return v;
  });
  verify_items<Followup>(e.followups, text, n,
                         [&](const Followup& f) { return std::vector<std::string>{f.text}; });
  return n;
}

namespace {

// Adds what a model answer leaves out (schema version, provenance of each item) so that it validates.
void complete_model_json(nlohmann::json& j, const std::optional<std::string>& id) {
  if (!j.is_object()) fail(Errc::kInvalidInput, "model output is not a JSON object");
  j["schema_version"] = kSchemaVersion;
  if (!j.contains("document_type") || !j["document_type"].is_string()) j["document_type"] = "other";
  const auto& types = document_types();
  if (std::find(types.begin(), types.end(), j["document_type"].get<std::string>()) == types.end())
    j["document_type"] = "other";
  if (id) j["document_id"] = *id;
  for (const char* list : {"diagnoses", "medications", "labs", "vitals", "allergies", "procedures",
                           "immunizations", "followups"}) {
    if (!j.contains(list)) continue;
    if (!j[list].is_array()) fail(Errc::kInvalidInput, "model output: \"{}\" is not a list", list);
    for (auto& item : j[list])
      if (item.is_object()) item["provenance"] = {{"page", 1}, {"source", "vlm"}};
  }
  for (const char* obj : {"patient", "encounter"})
    if (j.contains(obj) && j[obj].is_object()) j[obj]["provenance"] = {{"page", 1}, {"source", "vlm"}};
  j.erase("terms");
  j.erase("values");
  j.erase("pages");
}

class VlmExtractor final : public Extractor {
 public:
  // Loads its own model.
  explicit VlmExtractor(const ExtractorConfig& c) : config_(c), ocr_(OcrOptions{c.tessdata_dir}) {
    auto pre = std::make_shared<PreprocessConfig>(PreprocessConfig::load(c.model_dir));
    auto tokenizer = std::make_shared<Tokenizer>(Tokenizer::from_model_dir(c.model_dir));
    qwen25vl::LoadOptions lo;
    lo.threads = c.threads;
    lo.adapter = c.adapter;
    std::shared_ptr<qwen25vl::Model> model = qwen25vl::Model::load(c.model_dir, lo);
    auto mutex = std::make_shared<std::mutex>();
    generate_ = [pre, tokenizer, model, mutex](std::vector<ChatMessage> messages,
                                               std::vector<ImageRGB8> images, int max_new_tokens) {
      qwen25vl::GenerateOptions go;
      go.max_new_tokens = max_new_tokens;
      std::lock_guard lock(*mutex);  // one sequence at a time on this engine
      return qwen25vl::generate(*model, *tokenizer, messages, images, *pre, go).text;
    };
  }
  // Over a model run elsewhere.
  VlmExtractor(const ExtractorConfig& c, VlmGenerate generate)
      : config_(c), ocr_(OcrOptions{c.tessdata_dir}), generate_(std::move(generate)) {
    if (!generate_) fail(Errc::kUsage, "the VLM extractor needs a model to generate with");
  }
  std::string_view backend() const override { return "vlm"; }

  Extraction extract(const std::vector<Page>& pages, const ExtractOptions& options) override {
    if (pages.empty()) fail(Errc::kInvalidInput, "extract: no pages given");
    std::vector<ImageRGB8> images;
    ChatMessage user;
    user.role = "user";
    for (const auto& p : pages) {
      images.push_back(p.image);
      user.parts.push_back({ChatPart::Kind::kImage, {}});
    }
    user.parts.push_back({ChatPart::Kind::kText, synth::training_prompt()});
    const std::string answer = generate_({std::move(user)}, std::move(images), options.max_new_tokens);
    nlohmann::json j = repair_model_json(answer);
    complete_model_json(j, options.document_id);
    Extraction e = extraction_from_json(j, "model output");
    for (const auto& p : pages) e.pages.push_back(PageInfo{p.number, p.image.width, p.image.height, p.dpi});
    if (options.verify) {
      auto ocr = ocr_pages(ocr_, pages, config_.threads);
      verify_against_ocr(e, ocr);
    }
    check_extraction(to_json(e), "VLM extraction");
    return e;
  }

 private:
  ExtractorConfig config_;
  OcrEngine ocr_;
  VlmGenerate generate_;
};

}  // namespace

std::unique_ptr<Extractor> make_vlm_extractor(const ExtractorConfig& config) {
  return std::make_unique<VlmExtractor>(config);
}

std::unique_ptr<Extractor> make_vlm_extractor(const ExtractorConfig& config, VlmGenerate generate) {
  return std::make_unique<VlmExtractor>(config, std::move(generate));
}

}  // namespace mv::extract
