"""bot-detection: refuse requests whose User-Agent looks like a bot (Kong's
``bot-detection``, priority 2500, access phase).

Rules (Kong 3.x's handler):

* No User-Agent header: the request goes on. More than one: 400 ``Only one User-Agent
  header allowed``.
* The value, stripped of surrounding whitespace, is searched (unanchored) with the
  ``allow`` regexes first: a match lets the request through, whatever follows. Then the
  ``deny`` regexes, then the bad-bot rules below: a match is 403 ``Forbidden``.
* Regexes are Kong's (PCRE) syntax, compiled at load with
  :func:`guichet.config.pcre.compile_pcre` in ASCII mode (PCRE without its UTF flag, as
  Kong compiles them); one Python cannot express is a load error with the line.
* The bad-bot rules are Kong's ``rules.lua`` list, itself taken from ua-parser's
  ``regexes.yaml`` (uap-core, Apache-2.0). Kong's tests pin that ``curl/7.43.0`` and a
  desktop browser pass, and ``Googlebot/2.1`` and ``facebookexternalhit/1.1`` do not.

Cost (GUARANTEES.md §21):

* Only the first 2,048 characters of the User-Agent are examined (real ones are a few
  hundred; the header-size limit would otherwise let a 32 KiB value cost ~30 ms of regex
  work per request).
* The last three bad-bot rules start with bounded-but-wide repetitions that Python's
  backtracking engine retries at every position. The verdict only needs to know whether a
  rule matches somewhere, and everything in them but a keyword (and, for the first two, a
  separator and a digit after it) is optional, so each is searched as that shorter
  witness, which matches exactly the same strings (``_WITNESSES``; a unit test compares
  both on a corpus). The second of the three is implied by the first and is dropped.
* Each instance remembers the verdict for up to 10,000 distinct User-Agent values of at
  most 512 characters (cleared when full, like Kong's per-configuration LRU), so a
  returning client costs one dict lookup.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated

from pydantic import AfterValidator

from guichet.config.pcre import compile_pcre
from guichet.plugins.api import Plugin, PluginConfig, Response, error

if TYPE_CHECKING:
    from guichet.plugins.env import BuildEnv
    from guichet.plugins.request import Request

VERDICT_CACHE_SIZE = 10_000
REGEX_FLAGS = re.ASCII

# Kong's kong/plugins/bot-detection/rules.lua (from uap-core's regexes.yaml).
BAD_BOT_RULES: tuple[str, ...] = (
    # Pingdom
    r"(Pingdom\.com_bot_version_)(\d+)\.(\d+)",
    # Facebook
    r"(facebookexternalhit)/(\d+)\.(\d+)",
    # Google Plus
    r"Google.*/\+/web/snippet",
    # Twitter
    r"(Twitterbot)/(\d+)\.(\d+)",
    # AWS S3 Clients
    r"\b(Boto3?|JetS3t|aws-(?:cli|sdk-(?:cpp|go|java|nodejs|ruby2?|dotnet-(?:\d{1,2}|core)))|s3fs)/(\d+)\.(\d+)(?:\.(\d+)|)",
    # PTST / WebPageTest.org crawlers
    r" PTST/\d+(?:\.)?\d+$",
    # Bots Pattern '/name-0.0'
    r"/((?:Ant-)?Nutch|[A-z]+[Bb]ot|[A-z]+[Ss]pider|Axtaris|fetchurl|Isara|ShopSalad|Tailsweep)[ \-](\d+)(?:\.(\d+)(?:\.(\d+))?)?",
    # Bots Pattern 'name/0.0'
    r"\b(008|Altresium|Argus|BaiduMobaider|BoardReader|DNSGroup|DataparkSearch|EDI|Goodzer|Grub|INGRID|Infohelfer|LinkedInBot|LOOQ|Nutch|OgScrper|PathDefender|Peew|PostPost|Steeler|Twitterbot|VSE|WebCrunch|WebZIP|Y!J-BR[A-Z]|YahooSeeker|envolk|sproose|wminer)/(\d+)(?:\.(\d+)|)(?:\.(\d+)|)",
    # MSIECrawler
    r"(MSIE) (\d+)\.(\d+)([a-z]\d|[a-z]|);.* MSIECrawler",
    # Downloader ...
    r"(Google-HTTP-Java-Client|Apache-HttpClient|Go-http-client|scalaj-http|http%20client|Python-urllib|HttpMonitor|TLSProber|WinHTTP|JNLP|okhttp|aihttp|reqwest|axios|unirest-(?:java|python|ruby|nodejs|php|net))(?:[ /](\d+)(?:\.(\d+)|)(?:\.(\d+)|)|)",
    # Bots
    r"(CSimpleSpider|Cityreview Robot|CrawlDaddy|CrawlFire|Finderbots|Index crawler|Job Roboter|KiwiStatus Spider|Lijit Crawler|QuerySeekerSpider|ScollSpider|Trends Crawler|USyd-NLP-Spider|SiteCat Webbot|BotName\/\$BotVersion|123metaspider-Bot|1470\.net crawler|50\.nu|8bo Crawler Bot|Aboundex|Accoona-[A-z]{1,30}-Agent|AdsBot-Google(?:-[a-z]{1,30}|)|altavista|AppEngine-Google|archive.{0,30}\.org_bot|archiver|Ask Jeeves|[Bb]ai[Dd]u[Ss]pider(?:-[A-Za-z]{1,30})(?:-[A-Za-z]{1,30}|)|bingbot|BingPreview|blitzbot|BlogBridge|Bloglovin|BoardReader Blog Indexer|BoardReader Favicon Fetcher|boitho.com-dc|BotSeer|BUbiNG|\b\w{0,30}favicon\w{0,30}\b|\bYeti(?:-[a-z]{1,30}|)|Catchpoint(?: bot|)|[Cc]harlotte|Checklinks|clumboot|Comodo HTTP\(S\) Crawler|Comodo-Webinspector-Crawler|ConveraCrawler|CRAWL-E|CrawlConvera|Daumoa(?:-feedfetcher|)|Feed Seeker Bot|Feedbin|findlinks|Flamingo_SearchEngine|FollowSite Bot|furlbot|Genieo|gigabot|GomezAgent|gonzo1|(?:[a-zA-Z]{1,30}-|)Googlebot(?:-[a-zA-Z]{1,30}|)|Google SketchUp|grub-client|gsa-crawler|heritrix|HiddenMarket|holmes|HooWWWer|htdig|ia_archiver|ICC-Crawler|Icarus6j|ichiro(?:/mobile|)|IconSurf|IlTrovatore(?:-Setaccio|)|InfuzApp|Innovazion Crawler|InternetArchive|IP2[a-z]{1,30}Bot|jbot\b|KaloogaBot|Kraken|Kurzor|larbin|LEIA|LesnikBot|Linguee Bot|LinkAider|LinkedInBot|Lite Bot|Llaut|lycos|Mail\.RU_Bot|masscan|masidani_bot|Mediapartners-Google|Microsoft .{0,30} Bot|mogimogi|mozDex|MJ12bot|msnbot(?:-media {0,2}|)|msrbot|Mtps Feed Aggregation System|netresearch|Netvibes|NewsGator[^/]{0,30}|^NING|Nutch[^/]{0,30}|Nymesis|ObjectsSearch|OgScrper|Orbiter|OOZBOT|PagePeeker|PagesInventory|PaxleFramework|Peeplo Screenshot Bot|PlantyNet_WebRobot|Pompos|Qwantify|Read%20Later|Reaper|RedCarpet|Retreiver|Riddler|Rival IQ|scooter|Scrapy|Scrubby|searchsight|seekbot|semanticdiscovery|SemrushBot|Simpy|SimplePie|SEOstats|SimpleRSS|SiteCon|Slackbot-LinkExpanding|Slack-ImgProxy|Slurp|snappy|Speedy Spider|Squrl Java|Stringer|TheUsefulbot|ThumbShotsBot|Thumbshots\.ru|Tiny Tiny RSS|Twitterbot|WhatsApp|URL2PNG|Vagabondo|VoilaBot|^vortex|Votay bot|^voyager|WASALive.Bot|Web-sniffer|WebThumb|WeSEE:[A-z]{1,30}|WhatWeb|WIRE|WordPress|Wotbox|www\.almaden\.ibm\.com|Xenu(?:.s|) Link Sleuth|Xerka [A-z]{1,30}Bot|yacy(?:bot|)|YahooSeeker|Yahoo! Slurp|Yandex\w{1,30}|YodaoBot(?:-[A-z]{1,30}|)|YottaaMonitor|Yowedo|^Zao|^Zao-Crawler|ZeBot_www\.ze\.bz|ZooShot|ZyBorg)(?:[ /]v?(\d+)(?:\.(\d+)(?:\.(\d+)|)|)|)",
    # Bots General matcher 'name/0.0'
    r"(?:\/[A-Za-z0-9\.]+|) {0,5}([A-Za-z0-9 \-_\!\[\]:]{0,50}(?:[Aa]rchiver|[Ii]ndexer|[Ss]craper|[Bb]ot|[Ss]pider|[Cc]rawl[a-z]{0,50}))[/ ](\d+)(?:\.(\d+)(?:\.(\d+)|)|)",
    # Bots General matcher 'name 0.0'
    r"(?:\/[A-Za-z0-9\.]+|) {0,5}([A-Za-z0-9 \-_\!\[\]:]{0,50}(?:[Aa]rchiver|[Ii]ndexer|[Ss]craper|[Bb]ot|[Ss]pider|[Cc]rawl[a-z]{0,50})) (\d+)(?:\.(\d+)(?:\.(\d+)|)|)",
    # Bots containing spider|scrape|bot(but not CUBOT)|Crawl
    r"((?:[A-z0-9]{1,50}|[A-z\-]{1,50} ?|)(?: the |)(?:[Ss][Pp][Ii][Dd][Ee][Rr]|[Ss]crape|[Cc][Rr][Aa][Ww][Ll])[A-z0-9]{0,50})(?:(?:[ /]| v)(\d+)(?:\.(\d+)|)(?:\.(\d+)|)|)",
)

# Verdict-equivalent forms of the last three rules (see the module docstring):
# rule 12 ("name/0.0"): a keyword, then "/" or " ", then a digit;
# rule 13 ("name 0.0"): the same with " " only, so implied by rule 12's witness;
# rule 14 (spider|scrape|crawl): the keyword alone.
_WITNESSES: tuple[str, ...] = (
    r"(?:[Aa]rchiver|[Ii]ndexer|[Ss]craper|[Bb]ot|[Ss]pider|[Cc]rawl[a-z]{0,50})[/ ]\d",
    r"[Ss][Pp][Ii][Dd][Ee][Rr]|[Ss]crape|[Cc][Rr][Aa][Ww][Ll]",
)
_BAD_BOTS = tuple(compile_pcre(rule, REGEX_FLAGS) for rule in BAD_BOT_RULES[:-3] + _WITNESSES)

EXAMINED_LENGTH = 2048
CACHED_LENGTH = 512

# verdicts
PASS, ALLOWED, DENIED, BOT = 0, 1, 2, 3


def _check_regex(pattern: str) -> str:
    try:
        compile_pcre(pattern, REGEX_FLAGS)
    except (re.error, RecursionError, OverflowError) as exc:
        raise ValueError(f"'{pattern}' is not a valid regex: {exc}") from None
    return pattern


Regex = Annotated[str, AfterValidator(_check_regex)]


class BotDetectionConfig(PluginConfig):
    allow: list[Regex] = []
    deny: list[Regex] = []


def examine_user_agent(user_agent: str, allow: tuple[re.Pattern[str], ...],
                       deny: tuple[re.Pattern[str], ...],
                       bad_bots: tuple[re.Pattern[str], ...] = _BAD_BOTS) -> int:
    """The verdict on a User-Agent: ALLOWED, DENIED, BOT or PASS (in Kong's order)."""
    user_agent = user_agent.strip()[:EXAMINED_LENGTH]
    for pattern in allow:
        if pattern.search(user_agent):
            return ALLOWED
    for pattern in deny:
        if pattern.search(user_agent):
            return DENIED
    for pattern in bad_bots:
        if pattern.search(user_agent):
            return BOT
    return PASS


class BotDetection(Plugin):
    name = "bot-detection"
    priority = 2500
    Config = BotDetectionConfig
    no_consumer = True

    def __init__(self, config: BotDetectionConfig, env: "BuildEnv") -> None:
        super().__init__(config, env)
        self.allow = tuple(compile_pcre(p, REGEX_FLAGS) for p in config.allow)
        self.deny = tuple(compile_pcre(p, REGEX_FLAGS) for p in config.deny)
        self._verdicts: dict[str, int] = {}

    def verdict(self, user_agent: str) -> int:
        verdict = self._verdicts.get(user_agent)
        if verdict is None:
            verdict = examine_user_agent(user_agent, self.allow, self.deny)
            if len(user_agent) <= CACHED_LENGTH:
                if len(self._verdicts) >= VERDICT_CACHE_SIZE:
                    self._verdicts.clear()
                self._verdicts[user_agent] = verdict
        return verdict

    def access(self, req: "Request") -> Response | None:
        user_agent = req.headers.get("user-agent")
        if user_agent is None:
            return None
        if len(req.header_values("user-agent")) > 1:
            return error(400, "Only one User-Agent header allowed")
        if self.verdict(user_agent) >= DENIED:
            return error(403, "Forbidden")
        return None
