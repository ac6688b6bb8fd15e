#include "data/synth.hpp"

#include <cairo-pdf.h>
#include <cairo.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <png.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "core/error.hpp"
#include "core/file.hpp"
#include "core/log.hpp"
#include "core/progress.hpp"
#include "data/clinical_tables.hpp"
#include "data/synth_degrade.hpp"
#include "data/synth_documents.hpp"
#include "extract/schema.hpp"

namespace mv::synth {

namespace {

using nlohmann::json;
namespace fs = std::filesystem;

constexpr double kDpi = 150.0;
constexpr int kMaxCount = 1'000'000;

// ---- raster and file output ----------------------------------------------------------------------------

ImageRGB8 rasterize(const Canvas& canvas, int page) {
  const int w = canvas.page_width(), h = canvas.page_height();
  cairo_surface_t* surface = cairo_image_surface_create(CAIRO_FORMAT_RGB24, w, h);
  if (cairo_surface_status(surface) != CAIRO_STATUS_SUCCESS) {
    cairo_surface_destroy(surface);
    fail(Errc::kFailure, "synth: cannot allocate a {}x{} page", w, h);
  }
  cairo_t* cr = cairo_create(surface);
  cairo_set_source_rgb(cr, 1, 1, 1);
  cairo_paint(cr);
  canvas.paint(page, cr);
  cairo_destroy(cr);
  cairo_surface_flush(surface);
  ImageRGB8 img;
  img.width = w;
  img.height = h;
  img.pixels.resize(static_cast<std::size_t>(w) * h * 3);
  const unsigned char* data = cairo_image_surface_get_data(surface);
  const int stride = cairo_image_surface_get_stride(surface);
  for (int y = 0; y < h; ++y) {
    const auto* src = reinterpret_cast<const std::uint32_t*>(data + static_cast<std::size_t>(y) * stride);
    std::uint8_t* dst = img.row(y);
    for (int x = 0; x < w; ++x) {
      const std::uint32_t p = src[x];  // native-endian xRGB
      dst[3 * x] = static_cast<std::uint8_t>((p >> 16) & 0xFF);
      dst[3 * x + 1] = static_cast<std::uint8_t>((p >> 8) & 0xFF);
      dst[3 * x + 2] = static_cast<std::uint8_t>(p & 0xFF);
    }
  }
  cairo_surface_destroy(surface);
  return img;
}

void png_write_to_string(png_structp png, png_bytep data, png_size_t length) {
  static_cast<std::string*>(png_get_io_ptr(png))->append(reinterpret_cast<const char*>(data), length);
}
void png_flush_noop(png_structp) {}

// PNG bytes; grayscale when every pixel is grey (most documents), which is smaller and faster.
bool is_gray(const ImageRGB8& img) {
  for (std::size_t i = 0; i < img.pixels.size(); i += 3)
    if (img.pixels[i] != img.pixels[i + 1] || img.pixels[i] != img.pixels[i + 2]) return false;
  return true;
}

std::string encode_png(const ImageRGB8& img) {
  const bool gray = is_gray(img);
  std::string out;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png != nullptr ? png_create_info_struct(png) : nullptr;
  if (png == nullptr || info == nullptr) {
    png_destroy_write_struct(&png, &info);
    fail(Errc::kFailure, "synth: cannot create a PNG writer");
  }
  std::vector<std::uint8_t> row;
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    fail(Errc::kFailure, "synth: PNG encoding failed");
  }
  png_set_write_fn(png, &out, png_write_to_string, png_flush_noop);
  png_set_IHDR(png, info, static_cast<png_uint_32>(img.width), static_cast<png_uint_32>(img.height), 8,
               gray ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_set_compression_level(png, 1);
  png_set_filter(png, 0, PNG_FILTER_UP);
  png_write_info(png, info);
  row.resize(static_cast<std::size_t>(img.width));
  for (int y = 0; y < img.height; ++y) {
    const std::uint8_t* src = img.row(y);
    if (gray) {
      for (int x = 0; x < img.width; ++x) row[static_cast<std::size_t>(x)] = src[3 * x];
      png_write_row(png, row.data());
    } else {
      png_write_row(png, const_cast<png_bytep>(src));
    }
  }
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return out;
}

cairo_status_t cairo_write_to_string(void* closure, const unsigned char* data, unsigned int length) {
  static_cast<std::string*>(closure)->append(reinterpret_cast<const char*>(data), length);
  return CAIRO_STATUS_SUCCESS;
}

// PDFs: pages are 150 dpi in size, so a page rasterised at 150 dpi has the truth's pixel coordinates.
// Creation date and metadata are fixed so a seed gives identical bytes (cairo would stamp the current time).
struct PdfWriter {
  std::string out;
  cairo_surface_t* surface = nullptr;
  cairo_t* cr = nullptr;
  PdfWriter(int w, int h, const std::string& date_iso) {
    surface =
        cairo_pdf_surface_create_for_stream(cairo_write_to_string, &out, w * 72.0 / kDpi, h * 72.0 / kDpi);
    cairo_pdf_surface_set_metadata(surface, CAIRO_PDF_METADATA_CREATE_DATE, date_iso.c_str());
    cairo_pdf_surface_set_metadata(surface, CAIRO_PDF_METADATA_TITLE,
                                   "Synthetic clinical document (MedVision)");
    cairo_pdf_surface_set_metadata(surface, CAIRO_PDF_METADATA_CREATOR, "medvision synth");
    cr = cairo_create(surface);
    cairo_scale(cr, 72.0 / kDpi, 72.0 / kDpi);
  }
  ~PdfWriter() {
    if (cr != nullptr) cairo_destroy(cr);
    if (surface != nullptr) cairo_surface_destroy(surface);
  }
  std::string finish() {
    cairo_destroy(cr);
    cr = nullptr;
    cairo_surface_finish(surface);
    const cairo_status_t status = cairo_surface_status(surface);
    if (status != CAIRO_STATUS_SUCCESS)
      fail(Errc::kFailure, "synth: PDF output failed: {}", cairo_status_to_string(status));
    return std::move(out);
  }
};

std::string pdf_date(const extract::Extraction& truth) {
  if (truth.encounter && truth.encounter->date) return truth.encounter->date->substr(0, 10) + "T12:00:00";
  if (truth.encounter && truth.encounter->admission_date)
    return truth.encounter->admission_date->substr(0, 10) + "T12:00:00";
  return "2024-01-01T12:00:00";
}

// Vector pages (undegraded documents): real text, as a born-digital PDF.
std::string encode_pdf(const Canvas& canvas, std::nullptr_t, const std::string& date_iso) {
  PdfWriter pdf(canvas.page_width(), canvas.page_height(), date_iso);
  for (int p = 1; p <= canvas.page_count(); ++p) {
    canvas.paint(p, pdf.cr);
    cairo_show_page(pdf.cr);
  }
  return pdf.finish();
}

// Raster pages (degraded documents), embedded as JPEG as scanners do.
std::string encode_pdf(int w, int h, const std::vector<ImageRGB8>& pages,
                       const std::vector<int>& jpeg_quality, const std::string& date_iso) {
  PdfWriter pdf(w, h, date_iso);
  for (std::size_t k = 0; k < pages.size(); ++k) {
    const ImageRGB8& img = pages[k];
    cairo_surface_t* page = cairo_image_surface_create(CAIRO_FORMAT_RGB24, img.width, img.height);
    unsigned char* data = cairo_image_surface_get_data(page);
    const int stride = cairo_image_surface_get_stride(page);
    for (int y = 0; y < img.height; ++y) {
      auto* dst = reinterpret_cast<std::uint32_t*>(data + static_cast<std::size_t>(y) * stride);
      const std::uint8_t* src = img.row(y);
      for (int x = 0; x < img.width; ++x)
        dst[x] = (0xFFu << 24) | (std::uint32_t{src[3 * x]} << 16) | (std::uint32_t{src[3 * x + 1]} << 8) |
                 src[3 * x + 2];
    }
    cairo_surface_mark_dirty(page);
    // cairo embeds the JPEG bytes as they are.
    auto* jpeg = new std::vector<std::uint8_t>(encode_jpeg(img, jpeg_quality[k] > 0 ? jpeg_quality[k] : 88));
    cairo_surface_set_mime_data(
        page, CAIRO_MIME_TYPE_JPEG, jpeg->data(), jpeg->size(),
        [](void* p) { delete static_cast<std::vector<std::uint8_t>*>(p); }, jpeg);
    cairo_set_source_surface(pdf.cr, page, 0, 0);
    cairo_paint(pdf.cr);
    cairo_surface_destroy(page);
    cairo_show_page(pdf.cr);
  }
  return pdf.finish();
}

// ---- one document ----------------------------------------------------------------------------------------

struct DocResult {
  std::string id, type, degrade, file, truth_file;
  int pages = 0;
};

void transform_provenance(std::optional<extract::Provenance>& prov, const std::vector<Homography>& hs, int w,
                          int h) {
  if (!prov) return;
  const Homography& hm = hs[static_cast<std::size_t>(prov->page - 1)];
  if (prov->bbox) prov->bbox = transform_box(*prov->bbox, hm, w, h);
  for (auto& [name, box] : prov->fields) box = transform_box(box, hm, w, h);
}

template <typename T>
void transform_list(std::vector<T>& items, const std::vector<Homography>& hs, int w, int h) {
  for (auto& item : items) transform_provenance(item.provenance, hs, w, h);
}

// cairo 1.16 can deadlock when several threads create and destroy scaled fonts at once (its global font
// caches take locks in different orders), even with one Pango font map per thread. All Pango and cairo work
// therefore runs under this lock; the expensive pixel work (degradations, PNG/JPEG encoding) runs outside it.
std::mutex& cairo_mutex() {
  static std::mutex m;
  return m;
}

DocResult render_one(const SynthOptions& opt, const std::vector<std::string>& types,
                     const ClinicalTables& tables, const TextEngine& engine, int index) {
  DocResult res;
  res.type = types[static_cast<std::size_t>(index) % types.size()];
  res.id = fmt::format("{}_{:05d}", res.type, index);
  Rng rng = Rng::derive(opt.seed, 0, static_cast<std::uint64_t>(index));
  Rng drng = Rng::derive(opt.seed, 1, static_cast<std::uint64_t>(index));
  res.degrade = opt.degrade;
  if (res.degrade == "mixed") {
    static const char* kModes[] = {"none", "scan", "fax", "photo"};
    res.degrade = kModes[drng.weighted({25, 35, 15, 25})];
  }

  extract::Extraction truth;
  std::vector<ImageRGB8> images;
  std::string vector_pdf;
  int w = 0, h = 0;
  {
    std::lock_guard<std::mutex> lock(cairo_mutex());
    ComposedDocument doc = compose_document(res.type, tables, engine, rng);
    const Canvas& canvas = *doc.canvas;
    res.pages = canvas.page_count();
    w = canvas.page_width();
    h = canvas.page_height();
    truth = std::move(doc.truth);
    if (res.pages == 1 || res.degrade != "none") {
      for (int p = 1; p <= res.pages; ++p) images.push_back(rasterize(canvas, p));
    } else {
      vector_pdf = encode_pdf(canvas, nullptr, pdf_date(truth));
    }
    doc.canvas.reset();  // Pango layouts are released under the lock too
  }
  truth.document_id = res.id;

  std::vector<Homography> hs(static_cast<std::size_t>(res.pages));
  std::vector<int> jpeg_quality(images.size(), 0);  // > 0: the page is written as JPEG (scans, photos)
  for (std::size_t p = 0; p < images.size(); ++p)
    hs[p] = degrade(images[p], res.degrade, drng, &jpeg_quality[p]);
  if (truth.patient) transform_provenance(truth.patient->provenance, hs, w, h);
  if (truth.encounter) transform_provenance(truth.encounter->provenance, hs, w, h);
  transform_list(truth.diagnoses, hs, w, h);
  transform_list(truth.medications, hs, w, h);
  transform_list(truth.labs, hs, w, h);
  transform_list(truth.vitals, hs, w, h);
  transform_list(truth.allergies, hs, w, h);
  transform_list(truth.procedures, hs, w, h);
  transform_list(truth.immunizations, hs, w, h);
  transform_list(truth.followups, hs, w, h);

  const json j = extract::to_json(truth);
  extract::check_extraction(j, res.id + ".json (generated)");  // a failure here is a bug in synth

  if (res.pages == 1 && jpeg_quality.front() > 0) {
    res.file = res.id + ".jpg";
    const auto bytes = encode_jpeg(images.front(), jpeg_quality.front());
    write_file(opt.out_dir / res.file,
               std::span<const std::byte>(reinterpret_cast<const std::byte*>(bytes.data()), bytes.size()));
  } else if (res.pages == 1) {
    res.file = res.id + ".png";
    write_file(opt.out_dir / res.file, encode_png(images.front()));
  } else {
    res.file = res.id + ".pdf";
    if (vector_pdf.empty()) {
      std::lock_guard<std::mutex> lock(cairo_mutex());
      vector_pdf = encode_pdf(w, h, images, jpeg_quality, pdf_date(truth));
    }
    write_file(opt.out_dir / res.file, vector_pdf);
  }
  res.truth_file = res.id + ".json";
  write_file(opt.out_dir / res.truth_file, j.dump(1) + "\n");
  return res;
}

}  // namespace

std::vector<std::string> parse_types(const std::string& list) {
  std::vector<std::string> out, unknown;
  std::stringstream ss(list);
  std::string item;
  while (std::getline(ss, item, ',')) {
    item.erase(0, item.find_first_not_of(" \t"));
    item.erase(item.find_last_not_of(" \t") + 1);
    if (item.empty()) continue;
    const auto& all = synth_types();
    if (std::find(all.begin(), all.end(), item) == all.end())
      unknown.push_back(item);
    else if (std::find(out.begin(), out.end(), item) == out.end())
      out.push_back(item);
  }
  if (!unknown.empty())
    fail(Errc::kUsage, "synth: unknown document type(s) {}; valid types: {}", fmt::join(unknown, ", "),
         fmt::join(synth_types(), ", "));
  if (out.empty())
    fail(Errc::kUsage, "synth: --types is empty; valid types: {}", fmt::join(synth_types(), ", "));
  return out;
}

SynthSummary run_synth(const SynthOptions& opt) {
  if (opt.out_dir.empty()) fail(Errc::kUsage, "synth: --out DIR is required");
  if (opt.count < 1 || opt.count > kMaxCount)
    fail(Errc::kUsage, "synth: --count must be between 1 and {}, got {}", kMaxCount, opt.count);
  const auto& modes = degrade_modes();
  if (std::find(modes.begin(), modes.end(), opt.degrade) == modes.end())
    fail(Errc::kUsage, "synth: --degrade must be one of {}, got \"{}\"", fmt::join(modes, ", "), opt.degrade);
  std::vector<std::string> types = opt.types.empty() ? synth_types() : opt.types;
  for (const auto& t : types)
    if (std::find(synth_types().begin(), synth_types().end(), t) == synth_types().end())
      parse_types(t);  // throws
  if (opt.threads < 0) fail(Errc::kUsage, "synth: --threads must be >= 0");

  std::error_code ec;
  if (fs::exists(opt.out_dir, ec) && !fs::is_directory(opt.out_dir, ec))
    fail(Errc::kIo, "synth: {} exists and is not a directory", opt.out_dir.string());
  fs::create_directories(opt.out_dir, ec);
  if (ec) fail(Errc::kIo, "synth: cannot create {}: {}", opt.out_dir.string(), ec.message());

  const ClinicalTables tables =
      ClinicalTables::load((opt.data_dir.empty() ? data_dir() : opt.data_dir) / "clinical");
  const auto start = std::chrono::steady_clock::now();
  const int hw = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int nthreads = std::min(opt.count, opt.threads > 0 ? opt.threads : hw);
  spdlog::info("synth: {} documents, {} types, degrade {}, {} threads", opt.count, types.size(), opt.degrade,
               nthreads);

  std::vector<DocResult> results(static_cast<std::size_t>(opt.count));
  std::atomic<int> next{0}, done{0};
  std::atomic<bool> failed{false};
  std::mutex error_mutex;
  std::string first_error;
  Errc first_code = Errc::kFailure;
  auto worker = [&] {
    std::unique_ptr<TextEngine> engine;
    try {
      {
        std::lock_guard<std::mutex> lock(cairo_mutex());
        engine = std::make_unique<TextEngine>();
      }
      for (int i = next.fetch_add(1); i < opt.count && !failed; i = next.fetch_add(1)) {
        results[static_cast<std::size_t>(i)] = render_one(opt, types, tables, *engine, i);
        done.fetch_add(1);
      }
    } catch (const Error& e) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!failed.exchange(true)) first_error = e.what(), first_code = e.code();
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!failed.exchange(true)) first_error = e.what(), first_code = Errc::kInternal;
    }
    std::lock_guard<std::mutex> lock(cairo_mutex());
    engine.reset();
  };
  {
    Progress progress("synth", static_cast<std::uint64_t>(opt.count), "docs");
    std::vector<std::thread> pool;
    for (int t = 0; t < nthreads; ++t) pool.emplace_back(worker);
    while (done.load() < opt.count && !failed.load()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      progress.update(static_cast<std::uint64_t>(done.load()));
    }
    for (auto& th : pool) th.join();
    progress.update(static_cast<std::uint64_t>(done.load()));
    progress.finish();
  }
  if (failed) throw Error(first_code, first_error);

  SynthSummary summary;
  json docs = json::array();
  for (const auto& r : results) {
    docs.push_back({{"id", r.id},
                    {"type", r.type},
                    {"file", r.file},
                    {"truth", r.truth_file},
                    {"pages", r.pages},
                    {"degrade", r.degrade}});
    ++summary.documents;
    summary.pages += r.pages;
    ++summary.by_type[r.type];
    ++summary.by_degrade[r.degrade];
  }
  json manifest = {{"generator", "medvision synth"},
                   {"medvision_version", MEDVISION_VERSION},
                   {"schema_version", extract::kSchemaVersion},
                   {"seed", opt.seed},
                   {"count", opt.count},
                   {"types", types},
                   {"degrade", opt.degrade},
                   {"dpi", kDpi},
                   {"documents", std::move(docs)}};
  summary.manifest = opt.out_dir / "manifest.json";
  write_file(summary.manifest, manifest.dump(1) + "\n");
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  spdlog::info("synth: wrote {} documents ({} pages) in {:.1f} s", summary.documents, summary.pages,
               summary.seconds);
  return summary;
}

const std::string& training_prompt() {
  static const std::string kPrompt =
      "Extract the clinical information in this document as JSON following the MedVision extraction schema "
      "1.0: "
      "document_type; patient (name, birth_date, mrn, sex); encounter (date, admission_date, discharge_date, "
      "facility, "
      "department, provider); diagnoses (text, icd10, status, role); medications (name, strength, dose, "
      "unit, form, "
      "route, frequency, prn, duration, indication, status, quantity, refills); labs (test, value, unit, "
      "reference_range, flag, time, loinc); vitals (name, value, unit, time); allergies (substance, "
      "reaction, "
      "severity) or no_known_allergies; procedures (name, date, findings, impression); immunizations "
      "(vaccine, date, "
      "dose_number, manufacturer, lot, route, site); followups (text, when). Copy values exactly as printed, "
      "write "
      "dates as YYYY-MM-DD, leave out fields that are not on the document, and output only the JSON.";
  return kPrompt;
}

ExportSummary export_training(const fs::path& synth_dir, const fs::path& out_dir, std::uint64_t split_seed) {
  const fs::path manifest_path = synth_dir / "manifest.json";
  std::error_code ec;
  if (!fs::exists(manifest_path, ec))
    fail(Errc::kNotFound, "synth: {} not found; --export-training needs a folder written by medvision synth",
         manifest_path.string());
  json manifest;
  try {
    manifest = json::parse(read_file(manifest_path));
  } catch (const json::exception& e) {
    fail(Errc::kInvalidInput, "{}: not valid JSON: {}", manifest_path.string(), e.what());
  }
  if (!manifest.is_object() || !manifest.contains("documents") || !manifest["documents"].is_array())
    fail(Errc::kInvalidInput, "{}: expected an object with a \"documents\" array", manifest_path.string());
  fs::create_directories(out_dir, ec);
  if (ec) fail(Errc::kIo, "synth: cannot create {}: {}", out_dir.string(), ec.message());
  const fs::path abs_out = fs::absolute(out_dir).lexically_normal();

  std::vector<std::string> lines;
  const auto& docs = manifest["documents"];
  for (std::size_t i = 0; i < docs.size(); ++i) {
    const json& d = docs[i];
    if (!d.is_object() || !d.contains("file") || !d["file"].is_string() || !d.contains("truth") ||
        !d["truth"].is_string())
      fail(Errc::kInvalidInput, "{}: documents[{}]: needs string \"file\" and \"truth\"",
           manifest_path.string(), i);
    const fs::path image = synth_dir / d["file"].get<std::string>();
    const fs::path truth_path = synth_dir / d["truth"].get<std::string>();
    if (!fs::exists(image, ec))
      fail(Errc::kNotFound, "{}: documents[{}]: {} not found", manifest_path.string(), i, image.string());
    json truth;
    try {
      truth = json::parse(read_file(truth_path));
    } catch (const json::exception& e) {
      fail(Errc::kInvalidInput, "{}: not valid JSON: {}", truth_path.string(), e.what());
    }
    extract::check_extraction(truth, truth_path.string());
    json response = extract::strip_provenance(truth);
    response.erase("document_id");
    const std::string rel =
        fs::absolute(image).lexically_normal().lexically_relative(abs_out).generic_string();
    json line = {{"image_path", rel.empty() ? image.generic_string() : rel},
                 {"prompt", training_prompt()},
                 {"response", response.dump()}};
    lines.push_back(line.dump());
  }
  std::vector<std::size_t> order(lines.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  Rng rng(split_seed);
  rng.shuffle(order);
  const std::size_t n = lines.size();
  const std::size_t n_train = n * 8 / 10, n_val = n / 10;
  std::string train, val, test;
  for (std::size_t k = 0; k < n; ++k) {
    std::string& dst = k < n_train ? train : k < n_train + n_val ? val : test;
    dst += lines[order[k]];
    dst += '\n';
  }
  write_file(out_dir / "train.jsonl", train);
  write_file(out_dir / "val.jsonl", val);
  write_file(out_dir / "test.jsonl", test);
  ExportSummary s;
  s.train = n_train;
  s.val = n_val;
  s.test = n - n_train - n_val;
  s.out_dir = out_dir;
  return s;
}

}  // namespace mv::synth
